using System.Text.RegularExpressions;
using Microsoft.Extensions.AI;
using XLstmOnnx.Cli;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// generation_config.json as the decoding defaults (transformers' meaning: do_sample false or absent is greedy), read by
/// the runtime and applied by the CLI and the IChatClient (the server: OpenAiSdkTests); an option or request wins;
/// sampling without a seed is random and reports the seed it used.
/// </summary>
[TestFixture]
[NonParallelizable]
public class GenerationDefaultsTests
{
    private TempDir _tmp = null!;
    private string _model = "", _sampling = "";
    private const string Prompt = "And Moses said unto the LORD";

    [OneTimeSetUp]
    public void Export()
    {
        _tmp = TestPaths.Temp();
        _model = _tmp.Sub("kjv");
        OnnxExporter.Export(Path.Combine(TestPaths.RepoRoot, "models", "kjv-xlstm"), _model, new ExportOptions());
        // the same model with a sampling generation_config.json
        _sampling = _tmp.Sub("kjv-sampling");
        Directory.CreateDirectory(_sampling);
        foreach (string f in Directory.GetFiles(_model)) File.Copy(f, Path.Combine(_sampling, Path.GetFileName(f)));
        File.WriteAllText(Path.Combine(_sampling, GenerationDefaults.FileName),
            """{"do_sample": true, "temperature": 1.3, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.1, "max_new_tokens": 7, "eos_token_id": 0, "top_a": null}""");
    }

    [OneTimeTearDown]
    public void Cleanup() => _tmp.Dispose();

    [Test]
    public void TheFileIsReadWithTransformersMeaning()
    {
        var d = GenerationDefaults.Load(_sampling);
        Assert.That((d.DoSample, d.Temperature, d.TopK, d.TopP, d.RepetitionPenalty, d.MaxNewTokens), Is.EqualTo((true, 1.3, 40, 0.95, 1.1, (int?)7)));
        var o = d.Options(128);
        Assert.That((o.Greedy, o.Temperature, o.TopK, o.MaxNewTokens), Is.EqualTo((false, 1.3, 40, 7)));
        var shipped = GenerationDefaults.Load(_model);
        Assert.That(shipped.Path, Is.Not.Null, "the exporter copies generation_config.json");
        Assert.That(shipped.Options(128), Is.EqualTo(new GenerationOptions { Greedy = true, MaxNewTokens = 128 }), "no do_sample: greedy; absent fields neutral");
        Assert.That(GenerationDefaults.Load(_tmp.Sub("none")), Is.EqualTo(new GenerationDefaults()), "no file: the neutral defaults");
    }

    [TestCase("""{"do_sample": "yes"}""", "do_sample", "true or false")]
    [TestCase("""{"temperature": 0}""", "temperature", "positive")]
    [TestCase("""{"top_k": 1.5}""", "top_k", "an integer, 0 or more")]
    [TestCase("""{"top_p": 2}""", "top_p", "in (0, 1]")]
    [TestCase("""{"repetition_penalty": "high"}""", "repetition_penalty", "a number")]
    [TestCase("""{"max_new_tokens": 0}""", "max_new_tokens", "an integer, 1 or more")]
    [TestCase("""[1]""", "", "a JSON object")]
    public void ABadFieldIsNamedWithTheFile(string json, string field, string expected)
    {
        using var dir = TestPaths.Temp();
        Directory.CreateDirectory(dir.Path);
        File.WriteAllText(Path.Combine(dir.Path, GenerationDefaults.FileName), json);
        var e = Assert.Throws<XLstmOnnxException>(() => GenerationDefaults.Load(dir.Path))!;
        Assert.That(e.Message, Does.StartWith(Path.Combine(dir.Path, GenerationDefaults.FileName)));
        Assert.That(e.Message, Does.Contain(field == "" ? expected : $"field '{field}' must be {expected}"));
    }

    [Test]
    public void TheCliDecodesWithTheModelsDefaults()
    {
        // the shipped model: no do_sample, so greedy without --greedy, and no seed to report
        var plain = CliTests.Run("generate", "--model", _model, "--prompt", Prompt, "--max-new-tokens", "12");
        var greedy = CliTests.Run("generate", "--model", _model, "--prompt", Prompt, "--max-new-tokens", "12", "--greedy");
        Assert.That(plain.Code, Is.Zero, plain.Err);
        Assert.That(plain.Out, Is.EqualTo(greedy.Out));
        Assert.That(plain.Err, Does.Not.Contain("seed"));
        // do_sample true: samples max_new_tokens 7 with a random seed, reported on stderr and repeatable
        var sampled = CliTests.Run("generate", "--model", _sampling, "--prompt-ids", "3,1,4", "--print-ids", "--ignore-eos");
        Assert.That(sampled.Code, Is.Zero, sampled.Err);
        Assert.That(sampled.Out.Trim().Split(' '), Has.Length.EqualTo(7), "max_new_tokens from the file");
        var seed = Regex.Match(sampled.Err, @"seed (\d+) \(--seed \1 repeats it\)");
        Assert.That(seed.Success, sampled.Err);
        var again = CliTests.Run("generate", "--model", _sampling, "--prompt-ids", "3,1,4", "--print-ids", "--ignore-eos", "--seed", seed.Groups[1].Value);
        Assert.That(again.Out, Is.EqualTo(sampled.Out), "the reported seed repeats the output");
        var other = CliTests.Run("generate", "--model", _sampling, "--prompt-ids", "3,1,4", "--print-ids", "--ignore-eos");
        Assert.That(Regex.Match(other.Err, @"seed (\d+)").Groups[1].Value, Is.Not.EqualTo(seed.Groups[1].Value), "no seed given: a new random one");
        // options win: --greedy on the sampling model, and --max-new-tokens
        var forced = CliTests.Run("generate", "--model", _sampling, "--prompt-ids", "3,1,4", "--print-ids", "--ignore-eos", "--greedy", "--max-new-tokens", "3");
        Assert.That(forced.Out.Trim().Split(' '), Has.Length.EqualTo(3));
        Assert.That(forced.Err, Does.Not.Contain("seed"));
        var both = CliTests.Run("generate", "--model", _sampling, "--prompt-ids", "3,1,4", "--greedy", "--do-sample");
        Assert.That(both.Code, Is.EqualTo(CliErrors.BadInput));
        Assert.That(both.Err, Does.Contain("--greedy").And.Contain("--do-sample"));
    }

    [Test]
    public async Task TheChatClientUsesTheDefaultsAndReportsItsSeed()
    {
        using var session = XLstmSession.Load(_sampling);
        using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 2 });
        IChatClient client = new XLstmChatClient(engine, "kjv");
        List<ChatMessage> messages = [new(ChatRole.User, "Who was the son of Abraham?")];
        var first = await client.GetResponseAsync(messages);
        Assert.That(first.Usage!.OutputTokenCount, Is.LessThanOrEqualTo(7), "max_new_tokens from the file");
        var seed = (long)first.AdditionalProperties![XLstmChatClient.SeedProperty]!;
        var again = await client.GetResponseAsync(messages, new ChatOptions { Seed = seed });
        Assert.That(again.Text, Is.EqualTo(first.Text), "the reported seed repeats the reply");
        Assert.That((long)again.AdditionalProperties![XLstmChatClient.SeedProperty]!, Is.EqualTo(seed));
        var seeds = new HashSet<long>();
        for (int i = 0; i < 3; i++) seeds.Add((long)(await client.GetResponseAsync(messages)).AdditionalProperties![XLstmChatClient.SeedProperty]!);
        Assert.That(seeds, Has.Count.EqualTo(3), "without a seed, a random one each time");
        var streamedSeed = 0L;
        await foreach (var u in client.GetStreamingResponseAsync(messages, new ChatOptions { Seed = 99 }))
        {
            if (u.AdditionalProperties?.TryGetValue(XLstmChatClient.SeedProperty, out var s) == true) streamedSeed = (long)s!;
        }
        Assert.That(streamedSeed, Is.EqualTo(99));
        // options win over the file: temperature 0 is greedy (any seed, one text), MaxOutputTokens the length
        var greedy = await client.GetResponseAsync(messages, new ChatOptions { Temperature = 0, MaxOutputTokens = 12, Seed = 1 });
        var greedyAgain = await client.GetResponseAsync(messages, new ChatOptions { Temperature = 0, MaxOutputTokens = 12, Seed = 2 });
        Assert.That(greedyAgain.Text, Is.EqualTo(greedy.Text));
        Assert.That(greedy.FinishReason == ChatFinishReason.Stop || greedy.Usage!.OutputTokenCount == 12, $"{greedy.FinishReason} after {greedy.Usage!.OutputTokenCount} tokens");
    }
}
