using System.Diagnostics;
using System.Globalization;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Export;

namespace XLstmOnnx.Tests;

/// <summary>The shipped model (models/kjv-xlstm): its greedy text is locked to transformers', chat and score run end to end.</summary>
[TestFixture]
[NonParallelizable]
public class ShippedModelTests
{
    private static readonly string Checkpoint = Path.Combine(TestPaths.RepoRoot, "models", "kjv-xlstm");
    private TempDir _tmp = null!;
    private string _model = "";

    [OneTimeSetUp]
    public void Export()
    {
        _tmp = TestPaths.Temp();
        _model = _tmp.Sub("kjv");
        OnnxExporter.Export(Checkpoint, _model, new ExportOptions());
    }

    [OneTimeTearDown]
    public void Cleanup() => _tmp.Dispose();

    [Test]
    public void GreedyTextEqualsTransformers()
    {
        using var f = SafetensorsFile.Open(Path.Combine(Checkpoint, "reference.safetensors"));
        string prompt = f.Metadata["greedy_prompt_text"], expected = f.Metadata["greedy_text"];
        int n = (int)(f.Get("greedy.greedy_ids").Shape[1] - f.Get("greedy.prompt_ids").Shape[1]);
        var (code, output) = GenerationTests.RunCli("generate", "--model", _model, "--prompt", prompt, "--greedy", "--max-new-tokens", n.ToString(CultureInfo.InvariantCulture));
        Assert.That(code, Is.Zero, output);
        Assert.That(output.TrimEnd('\n'), Is.EqualTo(expected), "the text transformers decoded from its greedy ids");
    }

    [Test]
    public void ExportWritesATokenizerModelThatAgrees()
    {
        string path = Path.Combine(_model, TokenizerModel.FileName);
        Assert.That(File.Exists(path), "tokenizer.onnx beside the model");
        using var onnx = new Runtime.Tokenization.OnnxTokenizer(path);
        var csharp = Runtime.Tokenization.HfTokenizer.Load(Path.Combine(_model, "tokenizer.json"));
        const string text = "And God said, Let there be light: and there was light.";
        Assert.That(onnx.Encode(text), Is.EqualTo(csharp.Encode(text)));
    }

    [Test]
    public void ChatRunsTurnsOnTheLiveState()
    {
        string state = _tmp.Sub("chat-state.safetensors");
        var (stdout, stderr) = RunProcess("Who was Moses?\nAnd who was Aaron?\n/save " + state + "\n/exit\n",
            "chat", "--model", _model, "--max-new-tokens", "20", "--temperature", "0.8", "--seed", "3");
        Assert.That(stderr, Does.Contain("state saved"));
        Assert.That(stderr.Split('\n').Count(l => l.StartsWith('[') && l.Contains("tokens/s")), Is.EqualTo(2), "two replies with timing");
        Assert.That(stdout.Count(c => c == '>'), Is.GreaterThanOrEqualTo(3), "three prompts shown");
        Assert.That(File.Exists(state));
    }

    /// <summary>
    /// The CLI's loss and perplexity equal an independent computation: one model call over the whole text, log-softmax
    /// of every position in double, the mean negative log-likelihood of each next token.
    /// </summary>
    [Test]
    public void ScoreEqualsOneCallOverTheWholeText()
    {
        string text = _tmp.Sub("genesis.txt");
        File.WriteAllText(text, "In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.\nAnd God said, Let there be light: and there was light.\n");
        var (code, output) = GenerationTests.RunCli("score", "--model", _model, "--text", text, "--window", "16");
        Assert.That(code, Is.Zero, output);
        var m = System.Text.RegularExpressions.Regex.Match(output, @"tokens (\d+), scored (\d+), loss ([0-9.]+), perplexity ([0-9.]+)");
        Assert.That(m.Success, output);

        using var session = Runtime.XLstmSession.Load(_model);
        var ids = session.Tokenizer!.Encode(File.ReadAllText(text));
        var logits = session.Run([.. ids.Select(i => (long)i)], ids.Length, session.CreateState(1));
        int v = (int)session.Manifest.VocabSize;
        double nll = 0;
        for (int t = 0; t + 1 < ids.Length; t++)
        {
            var row = logits.Values.AsSpan(t * v, v);
            double max = double.NegativeInfinity, sum = 0;
            foreach (float x in row) max = Math.Max(max, x);
            foreach (float x in row) sum += Math.Exp(x - max);
            nll -= row[ids[t + 1]] - max - Math.Log(sum);
        }
        double loss = nll / (ids.Length - 1);
        Assert.That(int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), Is.EqualTo(ids.Length));
        Assert.That(int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture), Is.EqualTo(ids.Length - 1), "every next token scored");
        // 1e-5: 16-token windows carry the state across calls (the same math in other calls: float32 rounding, ~1e-6 on
        // a loss of order 1) and the CLI prints six decimals (5e-7)
        Assert.That(double.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture), Is.EqualTo(loss).Within(1e-5), output);
        Assert.That(double.Parse(m.Groups[4].Value, CultureInfo.InvariantCulture), Is.EqualTo(Math.Exp(loss)).Within(1e-4 * Math.Exp(loss)), output);
        // a text the model was trained on: below its held-out perplexity 23.6
        Assert.That(Math.Exp(loss), Is.LessThan(23.6));
    }

    /// <summary>The streamed text equals Generate's, a stop string cut the same way, and nothing of it is shown.</summary>
    [Test]
    public async Task StreamedTextEqualsGenerate()
    {
        using var session = Runtime.XLstmSession.Load(_model);
        var tokenizer = session.Tokenizer!;
        int[] prompt = tokenizer.Encode("And God said");
        var free = new Runtime.Generation.GenerationOptions { Greedy = true, MaxNewTokens = 40, IgnoreEos = true };
        string freeText;
        using (var g = new Runtime.Generation.Generator(session))
        {
            var text = new System.Text.StringBuilder();
            g.Generate([prompt], free, (_, _, piece) => text.Append(piece));
            freeText = text.ToString();
        }
        // a stop string from the middle of the free text, so that it is held back over several tokens before it is cut
        string stop = freeText.Trim().Split(' ')[4] + " ";
        var o = free with { StopStrings = [stop] };
        string expected;
        Runtime.Generation.GenerationResult result;
        using (var g = new Runtime.Generation.Generator(session))
        {
            var text = new System.Text.StringBuilder();
            result = g.Generate([prompt], o, (_, _, piece) => text.Append(piece));
            expected = text.ToString();
        }
        Assert.That(result.Reasons[0], Is.EqualTo(Runtime.Generation.StopReason.StopString));
        Assert.That(expected, Is.EqualTo(freeText[..freeText.IndexOf(stop, StringComparison.Ordinal)]), "the text before the stop string");
        using var h = new Runtime.Generation.Generator(session);
        var streamed = new List<Runtime.Generation.GeneratedToken>();
        await foreach (var t in h.GenerateAsync(prompt, o)) streamed.Add(t);
        Assert.That(string.Concat(streamed.Select(t => t.Text)), Is.EqualTo(expected));
        Assert.That(streamed.Select(t => t.Token), Is.EqualTo(result.Tokens[0]));
        Assert.That(streamed[^1].Finish, Is.EqualTo(Runtime.Generation.StopReason.StopString));
    }


    /// <summary>
    /// A greedy multi-turn chat by value: every reply equals a one-shot greedy generation over the whole transcript
    /// read at once (the system text, each turn with its prefixes, the earlier replies' tokens), through /save, /reset
    /// (back to the system text) and /load; stdout is exactly the prompts and replies, untrimmed.
    /// </summary>
    [TestCase(true, TestName = "chat by value: --system and other prefixes")]
    [TestCase(false, TestName = "chat by value: the default prefixes")]
    public void GreedyChatEqualsOneShotGenerationOverTheTranscript(bool custom)
    {
        string system = custom ? "The book of Exodus.\n" : "", userPrefix = custom ? "\nQ: " : "\nUser: ", assistantPrefix = custom ? "\nA:" : "\nAssistant:";
        string[] turns = ["Who was Moses?", "And who was Aaron?", "Who was Noah?", "Who was Pharaoh?"];
        string state = _tmp.Sub($"chat-by-value-{custom}.safetensors");
        string[] args = ["chat", "--model", _model, "--greedy", "--max-new-tokens", "24"];
        if (custom) args = [.. args, "--system", system, "--user-prefix", userPrefix, "--assistant-prefix", assistantPrefix];
        var r = CliTests.RunWithInput($"{turns[0]}\n/save {state}\n{turns[1]}\n/reset\n{turns[2]}\n/load {state}\n{turns[3]}\n/exit\n", args);
        Assert.That(r.Code, Is.Zero, r.Err);
        Assert.That(r.Err, Does.Contain("state saved").And.Contain("state reset").And.Contain("state loaded"));

        using var session = Runtime.XLstmSession.Load(_model);
        var tok = session.Tokenizer!;
        var o = new Runtime.Generation.GenerationOptions { Greedy = true, MaxNewTokens = 24, StopStrings = [userPrefix.TrimEnd()] };
        // one turn read at once from zero over `history` + the turn's text; returns the reply and the history after it
        (string Text, List<int> History, bool Stopped) OneShot(List<int> history, string text)
        {
            var ids = new List<int>(history);
            ids.AddRange(tok.Encode(text));
            using var g = new Runtime.Generation.Generator(session);
            var sb = new System.Text.StringBuilder();
            var result = g.Generate([ids.ToArray()], o, (_, _, piece) => sb.Append(piece));
            ids.AddRange(result.Tokens[0]);
            return (sb.ToString(), ids, result.Reasons[0] == Runtime.Generation.StopReason.StopString);
        }
        // the turn's text: no blank line before the first turn of an empty state (with a system text the first turn
        // has the whole prefix); after a reply cut at the stop string, whose tokens are read, only what the prefix has
        // past that string
        string Turn(bool first, bool afterStop, string line) =>
            (first ? userPrefix.TrimStart('\n') : afterStop ? userPrefix[userPrefix.TrimEnd().Length..] : userPrefix) + line + assistantPrefix;

        var withSystem = system.Length > 0 ? tok.Encode(system).ToList() : [];
        bool empty = system.Length == 0;
        var a = OneShot(withSystem, Turn(first: empty, afterStop: false, turns[0]));
        var b = OneShot(a.History, Turn(first: false, a.Stopped, turns[1]));
        var c = OneShot(withSystem, Turn(first: empty, afterStop: false, turns[2]));         // /reset: back to the system text
        var d = OneShot(a.History, Turn(first: false, afterStop: a.Stopped, turns[3]));      // /load: the state after turn 1
        string expected = $"> {a.Text}\n> > {b.Text}\n> > {c.Text}\n> > {d.Text}\n> ";
        Assert.That(r.Out, Is.EqualTo(expected), "prompts and replies, exactly");
        Assert.That(new[] { a.Text, b.Text, c.Text, d.Text }.Distinct().Count(), Is.EqualTo(4), "four different replies: each turn is seen");
    }

    /// <summary>A generator whose model emits EOS stops there, EOS kept as the last token; with IgnoreEos it goes on.</summary>
    [Test]
    public void EosStopsGeneration()
    {
        using var session = Runtime.XLstmSession.Load(_model);
        int eos = (int)session.Manifest.EosTokenId!.Value;
        var prompt = session.Tokenizer!.Encode("And God said");
        using var g = new Runtime.Generation.Generator(session);
        var free = g.Generate([prompt], new Runtime.Generation.GenerationOptions { Greedy = true, MaxNewTokens = 6, IgnoreEos = true }).Tokens[0];
        Assert.That(free, Does.Not.Contain(eos), "the free continuation has no EOS in its first tokens");
        // the model made to emit EOS: a bias of +100 on it
        g.Reset();
        var options = new Runtime.Generation.GenerationOptions { Greedy = true, MaxNewTokens = 12, LogitBias = new Dictionary<int, float> { [eos] = 100 } };
        var result = g.Generate([prompt], options);
        Assert.That(result.Tokens[0], Is.EqualTo(new[] { eos }), "stops at the first EOS, which is kept");
        Assert.That(result.Reasons[0], Is.EqualTo(Runtime.Generation.StopReason.StopToken));
        g.Reset();
        var ignoring = g.Generate([prompt], options with { IgnoreEos = true });
        Assert.That(ignoring.Tokens[0], Has.Length.EqualTo(12).And.All.EqualTo(eos), "IgnoreEos: EOS is a token like any other");
        Assert.That(ignoring.Reasons[0], Is.EqualTo(Runtime.Generation.StopReason.MaxNewTokens));
    }

    private static (string Stdout, string Stderr) RunProcess(string stdin, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("exec");
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "xlstm-onnx.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        var err = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.That(p.ExitCode, Is.Zero, err.Result);
        return (stdout, err.Result);
    }
}
