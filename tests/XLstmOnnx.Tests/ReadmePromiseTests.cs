using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>
/// What the README promises of the tool, by value: generate's sampling limits and stop ids against greedy decoding and
/// its timing report; bench's numbers against each other and against greedy decoding, and its profile; make-checkpoint
/// read back through the checkpoint reader; seeded random weights; the graph's node count for xLSTM-7b; every
/// mlstm_kernels registry name.
/// </summary>
[TestFixture]
[NonParallelizable] // the CLI redirects Console
public class ReadmePromiseTests
{
    private TempDir _tmp = null!;
    private string _model = "", _fast = "";

    [OneTimeSetUp]
    public void Export()
    {
        _tmp = TestPaths.Temp();
        _model = _tmp.Sub("m");
        _fast = _tmp.Sub("fast");
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "fused_bias"), _model, new ExportOptions());
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "fused_bias"), _fast, new ExportOptions { LastLogitsOnly = true });
    }

    [OneTimeTearDown]
    public void Cleanup() => _tmp.Dispose();

    private static int[] Ids(string output) => [.. output.TrimEnd('\n').Split('\n')[^1].Split(' ').Select(int.Parse)];

    private int[] Generate(params string[] extra)
    {
        var r = CliTests.Run(["generate", "--model", _model, "--prompt-ids", "5,17,3,99,44", "--max-new-tokens", "12", "--ignore-eos", "--print-ids", .. extra]);
        Assert.That(r.Code, Is.Zero, r.Err);
        return Ids(r.Out);
    }

    /// <summary>
    /// --top-k 1 and --min-p 0.999 leave one candidate, the argmax (no two tokens within 0.1% here), whatever the temperature and seed: the greedy ids.
    /// --stop-token-ids stops after the first of them, which is kept. The timing report counts what was generated.
    /// </summary>
    [Test]
    public void GenerateSamplingLimitsAndStopIdsActOnTheTokens()
    {
        var greedy = Generate("--greedy");
        Assert.That(greedy.Distinct().Count(), Is.GreaterThan(1), "a continuation with several ids");
        Assert.That(Generate("--temperature", "5", "--top-k", "1", "--seed", "3"), Is.EqualTo(greedy), "--top-k 1");
        Assert.That(Generate("--temperature", "5", "--min-p", "0.999", "--seed", "4"), Is.EqualTo(greedy), "--min-p 0.999");
        var hot = Generate("--temperature", "5", "--seed", "4");
        Assert.That(hot, Is.Not.EqualTo(greedy), "temperature 5 without the limits samples elsewhere");

        int stop = greedy[4];
        int at = Array.IndexOf(greedy, stop);
        // a second stop id the continuation never reaches (ids outside the vocabulary are refused)
        int unused = Enumerable.Range(0, 128).First(id => !greedy.Contains(id));
        var r = CliTests.Run("generate", "--model", _model, "--prompt-ids", "5,17,3,99,44", "--max-new-tokens", "12", "--ignore-eos", "--print-ids",
            "--greedy", "--stop-token-ids", $"{stop},{unused}");
        Assert.That(r.Code, Is.Zero, r.Err);
        Assert.That(Ids(r.Out), Is.EqualTo(greedy[..(at + 1)]), "up to the first stop id, kept");
        var m = Regex.Match(r.Err, @"prompt (\d+) tokens, generated (\d+) \((\w+)\); time to first token (\d+) ms, decode ([0-9.]+) tokens/s on cpu");
        Assert.That(m.Success, r.Err);
        Assert.That((m.Groups[1].Value, m.Groups[2].Value, m.Groups[3].Value), Is.EqualTo(("5", (at + 1).ToString(CultureInfo.InvariantCulture), nameof(StopReason.StopToken))));
        Assert.That(double.Parse(m.Groups[5].Value, CultureInfo.InvariantCulture), Is.GreaterThan(0));
    }

    /// <summary>
    /// bench's JSON is consistent with itself (medians of the per-rep times; tokens/s from them) and with the table it
    /// prints, and its first tokens are the greedy tokens of its prompts; --profile writes ONNX Runtime's node profile.
    /// </summary>
    [Test]
    public void BenchNumbersAgreeWithEachOtherAndWithGreedyDecoding()
    {
        string json = _tmp.Sub("bench.json"), prefix = _tmp.Sub("prof");
        var r = CliTests.Run("bench", "--model", _fast, "--batch", "1,3", "--prompt-tokens", "20", "--new-tokens", "6", "--reps", "3", "--out", json, "--profile", prefix);
        Assert.That(r.Code, Is.Zero, r.Out + r.Err);
        var doc = JsonDocument.Parse(File.ReadAllText(json)).RootElement;
        var rows = doc.GetProperty("results").EnumerateArray().ToList();
        Assert.That(rows.Select(x => x.GetProperty("batch").GetInt32()), Is.EqualTo(new[] { 1, 3 }));
        using var session = XLstmSession.Load(_fast);
        int vocab = (int)session.Manifest.VocabSize;
        var table = r.Out.Split('\n').Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).Where(c => c.Length == 8 && c[1] == "20").ToList();
        Assert.That(table, Has.Count.EqualTo(2), r.Out);
        for (int i = 0; i < rows.Count; i++)
        {
            var x = rows[i];
            int b = x.GetProperty("batch").GetInt32();
            double[] ttfts = [.. x.GetProperty("ttft_ms_all").EnumerateArray().Select(e => e.GetDouble())];
            double[] perToken = [.. x.GetProperty("ms_per_token_all").EnumerateArray().Select(e => e.GetDouble())];
            double ttft = x.GetProperty("ttft_ms").GetDouble(), ms = x.GetProperty("ms_per_token").GetDouble();
            Assert.Multiple(() =>
            {
                Assert.That((ttfts.Length, perToken.Length, x.GetProperty("reps").GetInt32()), Is.EqualTo((3, 3, 3)));
                Assert.That(ttft, Is.EqualTo(ttfts.Order().ElementAt(1)), "the median of three");
                Assert.That(ms, Is.EqualTo(perToken.Order().ElementAt(1)));
                // 1e-9 relative: the same double arithmetic, in another order at most
                Assert.That(x.GetProperty("prefill_tokens_per_s").GetDouble(), Is.EqualTo(b * 20 / (ttft / 1000)).Within(1e-9).Percent);
                Assert.That(x.GetProperty("decode_tokens_per_s").GetDouble(), Is.EqualTo(b * 1000 / ms).Within(1e-9).Percent);
                Assert.That(x.GetProperty("device_argmax_mismatches").GetInt32(), Is.Zero);
                Assert.That(x.GetProperty("last_row_tokens").GetArrayLength(), Is.EqualTo(6));
                // the table prints the same numbers, rounded (TTFT to 0.1 ms, decode to 0.1 tok/s, ms/token to 0.001)
                Assert.That(table[i][0], Is.EqualTo(b.ToString(CultureInfo.InvariantCulture)));
                Assert.That(double.Parse(table[i][3], CultureInfo.InvariantCulture), Is.EqualTo(ttft).Within(0.05 + 1e-9));
                Assert.That(double.Parse(table[i][6], CultureInfo.InvariantCulture), Is.EqualTo(ms).Within(0.0005 + 1e-9));
            });
            // bench's prompts: seeded random ids (Random(1234 + batch)); its first tokens are their greedy tokens
            var rng = new Random(1234 + b);
            var prompts = Enumerable.Range(0, b).Select(_ => (IReadOnlyList<int>)Enumerable.Range(0, 20).Select(_ => rng.Next(vocab)).ToArray()).ToArray();
            using var g = new Generator(session, b);
            var first = g.Generate(prompts, new GenerationOptions { Greedy = true, MaxNewTokens = 1, IgnoreEos = true }).Tokens.Select(t => t[0]);
            Assert.That(x.GetProperty("first_tokens").EnumerateArray().Select(e => e.GetInt32()), Is.EqualTo(first), $"batch {b}: the greedy first tokens");
        }
        // the profile: ONNX Runtime's trace events, named by the graph's node paths
        string profile = doc.GetProperty("profile").GetString()!;
        Assert.That(r.Out, Does.Contain($"profile: {profile}"));
        Assert.That(Path.GetFullPath(profile), Does.StartWith(prefix));
        var events = JsonDocument.Parse(File.ReadAllText(profile)).RootElement.EnumerateArray()
            .Where(e => e.TryGetProperty("cat", out var c) && c.GetString() == "Node").Select(e => e.GetProperty("name").GetString()!).ToList();
        Assert.That(events, Has.Some.Contains("/model/blocks.0/mlstm/"), "node events carry the graph's node names");
    }

    /// <summary>
    /// make-checkpoint writes what our checkpoint reader reads back: exported, it computes what the same seed's random
    /// weights compute when exported directly (one generator of weights, two routes); other seeds give other weights.
    /// </summary>
    [Test]
    public void MakeCheckpointReadsBackAndRandomWeightsAreSeeded()
    {
        string config = Path.Combine(TestPaths.RepoRoot, "models", "presets", "xlstm-tiny.json");
        var made = CliTests.Run("make-checkpoint", "--config", config, "--num-blocks", "2", "--output", _tmp.Sub("ckpt"), "--seed", "5", "--dtype", "fp32");
        Assert.That(made.Code, Is.Zero, made.Err);
        Assert.That(made.Out, Does.Contain("wrote a random 2-block checkpoint"));
        using (var ckpt = HfCheckpoint.Open(_tmp.Sub("ckpt")))
        {
            Assert.That(ckpt.Config.NumBlocks, Is.EqualTo(2), "config.json with the override");
        }
        foreach (var (name, args) in new[]
        {
            ("from-ckpt", new[] { "--checkpoint", _tmp.Sub("ckpt") }),
            ("seed5", new[] { "--random-weights", "--config", config, "--num-blocks", "2", "--seed", "5" }),
            ("seed5-again", new[] { "--random-weights", "--config", config, "--num-blocks", "2", "--seed", "5" }),
            ("seed6", new[] { "--random-weights", "--config", config, "--num-blocks", "2", "--seed", "6" }),
        })
        {
            var r = CliTests.Run(["export", .. args, "--output", _tmp.Sub(name)]);
            Assert.That(r.Code, Is.Zero, r.Err);
        }
        Assert.That(File.ReadAllBytes(Path.Combine(_tmp.Sub("seed5-again"), "model.onnx")), Is.EqualTo(File.ReadAllBytes(Path.Combine(_tmp.Sub("seed5"), "model.onnx"))),
            "the same seed: the same file, byte for byte");
        long[] ids = [5, 17, 3, 99, 44, 12, 7];
        float[] Logits(string name)
        {
            using var s = XLstmSession.Load(_tmp.Sub(name));
            return s.Run(ids, ids.Length, s.CreateState(1)).Values;
        }
        float[] a = Logits("from-ckpt"), b = Logits("seed5"), c = Logits("seed6");
        // bit for bit: fp32 weights written and read back unchanged, the same graph
        Assert.That(a, Is.EqualTo(b), "make-checkpoint → export equals --random-weights with the seed");
        Assert.That(c.Zip(b, (x, y) => Math.Abs(x - y)).Max(), Is.GreaterThan(1e-3), "another seed, other weights");
    }

    /// <summary>
    /// README, "The exported graph": with --mlstm-kernels custom, 730 nodes for xLSTM-7b instead of 1,722 (bf16,
    /// --last-logits-only --next-token, as tools/serve and tools/bench export it). A block's node count does not depend
    /// on its sizes, so xLSTM-7b's config at small widths with 1 and 2 blocks gives the 32-block count.
    /// </summary>
    [TestCase(MLstmKernels.Custom, 730)]
    [TestCase(MLstmKernels.Onnx, 1722)]
    public void TheSevenBillionGraphHasTheReadmesNodeCount(MLstmKernels kernels, int expected)
    {
        var sevenB = XLstmConfig.Load(Path.Combine(TestPaths.RepoRoot, "models", "presets", "xlstm-7b.json"));
        var options = new ExportOptions { Dtype = WeightDtype.Bf16, MLstmKernels = kernels, LastLogitsOnly = true, NextToken = true };
        int Nodes(int blocks)
        {
            var c = sevenB with { HiddenSize = 128, EmbeddingDim = 128, VocabSize = 256, NumBlocks = blocks, NumHiddenLayers = blocks };
            return OnnxExporter.ExportModel(c, RandomCheckpoint.Bind(c, 0), _tmp.Sub($"7b-{kernels}-{blocks}"), options, []).NodeCount;
        }
        int one = Nodes(1), two = Nodes(2);
        Assert.That(one + (sevenB.NumBlocks - 1) * (two - one), Is.EqualTo(expected), $"1 block: {one}, 2 blocks: {two}");
    }

    /// <summary>Every kernel name of mlstm_kernels' registry that computes HF's mLSTM is accepted in its field, and exports.</summary>
    [Test]
    public void EveryRegistryKernelNameIsAccepted()
    {
        var names = KernelNames.Chunkwise.Select(n => ("chunkwise_kernel", n)).Concat(KernelNames.Sequence.Select(n => ("sequence_kernel", n)))
            .Concat(KernelNames.Step.Select(n => ("step_kernel", n))).ToList();
        Assert.That(names, Has.Count.EqualTo(16), "12 chunkwise and parallel, 2 sequence, 2 step names");
        string baseJson = File.ReadAllText(Path.Combine(TestPaths.Fixtures, "single_basic", "config.json"));
        Assert.Multiple(() =>
        {
            foreach (var (field, name) in names)
            {
                var node = System.Text.Json.Nodes.JsonNode.Parse(baseJson)!.AsObject();
                node[field] = name;
                if (name.Contains("siging", StringComparison.Ordinal))
                {
                    // a sigmoid input gate: other math, refused naming the field
                    var e = Assert.Throws<XLstmOnnxException>(() => KernelNames.Resolve(XLstmConfig.Parse(node.ToJsonString(), "c.json"), "c.json"));
                    Assert.That(e!.Message, Does.Contain(field).And.Contain(name), name);
                    continue;
                }
                var forms = KernelNames.Resolve(XLstmConfig.Parse(node.ToJsonString(), "c.json"), "c.json");
                Assert.That(forms, Is.EqualTo((MLstmForm.Chunkwise, MLstmForm.Sequence, MLstmForm.Step)), $"{field} {name}");
            }
        });
    }
}
