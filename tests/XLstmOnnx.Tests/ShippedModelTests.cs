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

    [Test]
    public void ScorePrintsLossAndPerplexity()
    {
        string text = _tmp.Sub("genesis.txt");
        File.WriteAllText(text, "In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.\nAnd God said, Let there be light: and there was light.\n");
        var (code, output) = GenerationTests.RunCli("score", "--model", _model, "--text", text, "--window", "16");
        Assert.That(code, Is.Zero, output);
        var ppl = double.Parse(output.Split("perplexity ")[1].Trim(), CultureInfo.InvariantCulture);
        // a text the model was trained on: far below the uniform 2048 and below its held-out 23.6
        Assert.That(ppl, Is.InRange(1.0, 23.6), output);
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
