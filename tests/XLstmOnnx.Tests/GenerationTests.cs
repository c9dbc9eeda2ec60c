using System.Diagnostics;
using XLstmOnnx.Cli;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>Stateful generation against transformers' greedy generate(), batching, seeds and state control.</summary>
[TestFixture]
[NonParallelizable] // the CLI tests redirect Console
public class GenerationTests
{
    private static readonly Dictionary<string, string> Exported = [];
    private static TempDir _tmp = null!;

    [OneTimeSetUp]
    public static void ExportFixtures()
    {
        _tmp = TestPaths.Temp();
        foreach (var d in Directory.EnumerateDirectories(TestPaths.Fixtures))
        {
            if (!File.Exists(Path.Combine(d, "reference.safetensors"))) continue;
            string name = Path.GetFileName(d);
            OnnxExporter.Export(d, _tmp.Sub(name), new ExportOptions());
            Exported[name] = _tmp.Sub(name);
        }
    }

    [OneTimeTearDown]
    public static void Cleanup() => _tmp.Dispose();

    public static IEnumerable<TestCaseData> GreedyCases()
    {
        foreach (var d in Directory.EnumerateDirectories(TestPaths.Fixtures).Order(StringComparer.Ordinal))
        {
            string reference = Path.Combine(d, "reference.safetensors");
            if (!File.Exists(reference)) continue;
            using var f = SafetensorsFile.Open(reference);
            foreach (var t in f.Tensors.Where(t => t.Name.EndsWith(".greedy_ids", StringComparison.Ordinal)))
            {
                string c = t.Name.Split('.')[0];
                yield return new TestCaseData(Path.GetFileName(d), f.Get($"{c}.prompt_ids").ToInt64(), t.ToInt64())
                    .SetName($"greedy {Path.GetFileName(d)}.{c}");
            }
        }
    }

    /// <summary>The acceptance command: generate --prompt-ids ... --greedy --print-ids equals HF's greedy generate().</summary>
    [TestCaseSource(nameof(GreedyCases))]
    public void CliGreedyEqualsTransformers(string fixture, long[] prompt, long[] expected)
    {
        int n = expected.Length - prompt.Length;
        var (code, output) = RunCli("generate", "--model", Exported[fixture], "--prompt-ids", string.Join(",", prompt), "--greedy",
            "--max-new-tokens", n.ToString(), "--print-ids");
        Assert.That(code, Is.Zero, output);
        var lastLine = output.TrimEnd().Split('\n')[^1];
        Assert.That(lastLine.Split(' ').Select(long.Parse), Is.EqualTo(expected[prompt.Length..]));
    }

    [Test]
    public void BatchedEqualsOneByOne()
    {
        using var session = XLstmSession.Load(Exported["segmented"]);
        // lengths below a chunk, across a segment (max_inference_chunksize 20) and a single token
        int[][] prompts = [[5, 6, 7], [.. Enumerable.Range(10, 45)], [42], [.. Enumerable.Range(3, 17)]];
        var options = new GenerationOptions { Greedy = true, MaxNewTokens = 12, IgnoreEos = true };
        var alone = prompts.Select(p =>
        {
            using var g = new Generator(session, 1);
            return g.Generate([p], options).Tokens[0];
        }).ToArray();
        using var batch = new Generator(session, prompts.Length);
        var together = batch.Generate(prompts, options).Tokens;
        for (int r = 0; r < prompts.Length; r++) Assert.That(together[r], Is.EqualTo(alone[r]), $"row {r} (prompt of {prompts[r].Length})");
    }

    [Test]
    public void PaddingLeavesTheStateUntouched()
    {
        using var session = XLstmSession.Load(Exported["fused_bias"]);
        int[] prompt = [.. Enumerable.Range(1, 13)];
        using var alone = new Generator(session, 1);
        alone.Append([prompt]);
        using var padded = new Generator(session, 2);
        padded.Append([prompt, [.. Enumerable.Range(20, 40)]]); // row 0 gets 27 pad positions in front
        var a = alone.Snapshot();
        var b = padded.Snapshot();
        // row 0 of the batch must equal the prompt alone: the pads leave the state where it was. Not bitwise, because the
        // padded row sees another chunk grid; 1e-5 is fp32 rounding of states of magnitude ≤ ~10.
        for (int i = 0; i < a.Tensors.Length; i++)
        {
            int rowSize = a.Tensors[i].Length;
            Assert.That(b.Tensors[i].AsSpan(0, rowSize).ToArray(), Is.EqualTo(a.Tensors[i]).Within(1e-5), $"state tensor {i}");
        }
        Assert.That(padded.LastLogits(0).ToArray(), Is.EqualTo(alone.LastLogits(0).ToArray()).Within(1e-4));

        // the control: without the mask input, the same pads do move the state (as in HF), so the check above has teeth
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "fused_bias"), tmp.Sub("nomask"), new ExportOptions { AttentionMask = false });
        using var unmasked = XLstmSession.Load(tmp.Sub("nomask"));
        using var leaky = new Generator(unmasked, 2);
        leaky.Append([prompt, [.. Enumerable.Range(20, 40)]]);
        var diff = leaky.LastLogits(0).ToArray().Zip(alone.LastLogits(0).ToArray(), (x, y) => Math.Abs(x - y)).Max();
        Assert.That(diff, Is.GreaterThan(1e-2), "pads fed into the state change the logits");
    }

    [Test]
    public void SeededSamplingIsReproducibleAndSeedsDiffer()
    {
        using var session = XLstmSession.Load(Exported["single_basic"]);
        var o = new GenerationOptions { Temperature = 1.3, TopK = 40, TopP = 0.95, MinP = 0.01, RepetitionPenalty = 1.1, MaxNewTokens = 30, IgnoreEos = true, Seed = 1234 };
        int[] Run(GenerationOptions options)
        {
            using var g = new Generator(session, 1);
            return g.Generate([[1, 2, 3]], options).Tokens[0];
        }
        var first = Run(o);
        Assert.That(Run(o), Is.EqualTo(first), "same seed, same tokens");
        Assert.That(Run(o with { Seed = 99 }), Is.Not.EqualTo(first), "another seed draws other tokens (30 draws at T=1.3)");
        using var batch = new Generator(session, 2);
        var both = batch.Generate([[1, 2, 3], [9, 9]], o).Tokens;
        Assert.That(both[0], Is.EqualTo(first), "a sequence samples the same in a batch as alone");
    }

    [Test]
    public void SnapshotRestoreContinuesExactly()
    {
        using var session = XLstmSession.Load(Exported["tied_dims"]);
        var o = new GenerationOptions { Greedy = true, MaxNewTokens = 10, IgnoreEos = true };
        using var g = new Generator(session, 1);
        int[] system = [.. Enumerable.Range(4, 37)];
        g.Append([system]);
        var snap = g.Snapshot();
        var first = g.Generate([[7, 8]], o).Tokens[0];
        var more = g.Generate([[9]], o).Tokens[0];
        g.Restore(snap);
        Assert.That(g.Generate([[7, 8]], o).Tokens[0], Is.EqualTo(first), "after restore");
        Assert.That(g.Generate([[9]], o).Tokens[0], Is.EqualTo(more), "multi-turn continues identically");

        // the same conversation read in one go from zero
        using var whole = new Generator(session, 1);
        var once = whole.Generate([[.. system, 7, 8]], o).Tokens[0];
        Assert.That(once, Is.EqualTo(first), "appending turns to the live state equals reading the history at once");
    }

    [Test]
    public void SavedStateContinuesInANewProcess()
    {
        string model = Exported["single_basic"];
        string state = _tmp.Sub("state.safetensors");
        var uninterrupted = Subprocess("generate", "--model", model, "--prompt-ids", "3,1,4,1,5,9,2,6", "--greedy", "--max-new-tokens", "20", "--ignore-eos", "--print-ids");
        var first = Subprocess("generate", "--model", model, "--prompt-ids", "3,1,4,1,5,9,2,6", "--greedy", "--max-new-tokens", "8", "--ignore-eos", "--print-ids", "--save-state", state);
        var second = Subprocess("generate", "--model", model, "--load-state", state, "--greedy", "--max-new-tokens", "12", "--ignore-eos", "--print-ids");
        Assert.That(LastIds(first).Concat(LastIds(second)), Is.EqualTo(LastIds(uninterrupted)));
    }

    [Test]
    public void StateFileForAnotherModelIsRefused()
    {
        string state = _tmp.Sub("other.safetensors");
        using (var s = XLstmSession.Load(Exported["single_basic"]))
        using (var g = new Generator(s, 1))
        {
            g.Append([[1, 2]]);
            g.Snapshot().Save(state);
        }
        using var other = XLstmSession.Load(Exported["fused_bias"]);
        var e = Assert.Throws<XLstmOnnxException>(() => StateSnapshot.Load(state, other.Manifest));
        Assert.That(e!.Message, Does.Contain("other.safetensors").And.Contain("layers=1").And.Contain("layers=2"));
    }

    [Test]
    public void StopTokenEndsGenerationAndIsKept()
    {
        using var session = XLstmSession.Load(Exported["single_basic"]);
        int[] prompt = [.. Enumerable.Range(30, 20)];
        var o = new GenerationOptions { Greedy = true, MaxNewTokens = 10, IgnoreEos = true };
        int[] free;
        using (var g = new Generator(session, 1)) free = g.Generate([prompt], o).Tokens[0];
        int stop = free[3];
        int at = Array.IndexOf(free, stop);
        using var h = new Generator(session, 1);
        var r = h.Generate([prompt], o with { StopTokenIds = [stop] });
        Assert.That(r.Tokens[0], Is.EqualTo(free[..(at + 1)]), "generation ends with the first stop token, which is kept");
        Assert.That(r.Reasons[0], Is.EqualTo(StopReason.StopToken));
    }

    [TestCase(0, 1.0, "GenerationOptions.Temperature must be positive (or GenerationOptions.Greedy for argmax); found 0.")]
    [TestCase(1, 0.0, "GenerationOptions.TopP must be in (0, 1]; found 0.")]
    public void BadSamplingOptionsNameTheParameter(double temperature, double topP, string message)
    {
        var e = Assert.Throws<XLstmOnnxException>(() => new GenerationOptions { Temperature = temperature, TopP = topP }.Validate());
        Assert.That(e!.Message, Is.EqualTo(message));
        Assert.That(e.Parameter, Is.EqualTo(message[..message.IndexOf(' ')]));
    }

    [Test]
    public void SamplerLimitsAgreeWithGreedy()
    {
        var rng = new Random(5);
        var logits = Enumerable.Range(0, 300).Select(_ => (float)rng.NextDouble() * 10).ToArray();
        int greedy = Sampler.ArgMax(logits);
        foreach (var o in new[] { new GenerationOptions { TopK = 1 }, new GenerationOptions { TopP = 1e-6 }, new GenerationOptions { MinP = 0.999999 } })
        {
            var s = new Sampler(o with { Seed = 3 }, logits.Length);
            Assert.That(Enumerable.Range(0, 20).Select(_ => s.Next(logits)), Is.All.EqualTo(greedy), o.ToString());
        }
        var penalised = new Sampler(new GenerationOptions { Greedy = true, RepetitionPenalty = 1e6 }, logits.Length);
        penalised.Observe(greedy);
        Assert.That(penalised.Next(logits), Is.Not.EqualTo(greedy), "a seen token is penalised away");
    }

    [Test]
    public void ScoreEqualsTransformersLabelsLoss()
    {
        // transformers' loss is CrossEntropy(logits[:-1], ids[1:]); its logits are in the reference file.
        string fixture = Path.Combine(TestPaths.Fixtures, "segmented");
        using var f = SafetensorsFile.Open(Path.Combine(fixture, "reference.safetensors"));
        var ids = f.Get("seg_multi.input_ids").ToInt64().Select(i => (int)i).ToArray();
        var logits = f.Get("seg_multi.logits").ToFloat32();
        using var session = XLstmSession.Load(Exported["segmented"]);
        int v = (int)session.Manifest.VocabSize;
        double expected = Enumerable.Range(0, ids.Length - 1).Average(t => Scorer.Nll(logits.AsSpan(t * v, v), ids[t + 1]));
        foreach (int window in new[] { ids.Length, 7 })
        {
            var r = Scorer.Score(session, ids, null, window);
            Assert.That(r.Tokens, Is.EqualTo(ids.Length - 1));
            // logits agree to ~1e-4 (fixture tolerance); the mean NLL then agrees to well under 1e-4
            Assert.That(r.Loss, Is.EqualTo(expected).Within(1e-4), $"window {window}");
        }
        var labels = ids.Select((t, i) => i % 3 == 0 ? Scorer.IgnoreIndex : t).ToArray();
        var masked = Scorer.Score(session, ids, labels, 16);
        Assert.That(masked.Tokens, Is.EqualTo(Enumerable.Range(1, ids.Length - 1).Count(i => i % 3 != 0)), "-100 labels are not scored");
    }

    private static long[] LastIds(string output) => output.TrimEnd().Split('\n')[^1].Split(' ').Select(long.Parse).ToArray();

    internal static (int Code, string Output) RunCli(params string[] args)
    {
        var (o, e) = (Console.Out, Console.Error);
        using var w = new StringWriter();
        Console.SetOut(w);
        Console.SetError(TextWriter.Null);
        try
        {
            return (CliApp.Run(args), w.ToString());
        }
        finally
        {
            Console.SetOut(o);
            Console.SetError(e);
        }
    }

    /// <summary>Runs the CLI in a new process (dotnet exec on the built xlstm-onnx.dll).</summary>
    private static string Subprocess(params string[] args)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "xlstm-onnx.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("exec");
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string stdout = p.StandardOutput.ReadToEnd();
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.That(p.ExitCode, Is.Zero, stderr);
        return stdout;
    }
}
