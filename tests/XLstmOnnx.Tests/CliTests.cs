using XLstmOnnx.Cli;

namespace XLstmOnnx.Tests;

/// <summary>The CLI's exit codes and output, run in-process.</summary>
[TestFixture]
[NonParallelizable] // redirects Console
public class CliTests
{
    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var (o, e) = (Console.Out, Console.Error);
        using var outWriter = new StringWriter();
        using var errWriter = new StringWriter();
        Console.SetOut(outWriter);
        Console.SetError(errWriter);
        try
        {
            return (CliApp.Run(args), outWriter.ToString(), errWriter.ToString());
        }
        finally
        {
            Console.SetOut(o);
            Console.SetError(e);
        }
    }

    [Test]
    public void ExportThenVerifyPassesAndTightToleranceFails()
    {
        using var tmp = TestPaths.Temp();
        string ckpt = Path.Combine(TestPaths.Fixtures, "segmented");
        var export = Run("export", "--checkpoint", ckpt, "--output", tmp.Sub("m"));
        Assert.That(export.Code, Is.Zero, export.Out + export.Err);
        Assert.That(export.Err, Does.Contain("export: 100 %"), "progress is shown");

        var ok = Run("verify", "--model", tmp.Sub("m"), "--reference", Path.Combine(ckpt, "reference.safetensors"));
        Assert.That(ok.Code, Is.Zero, ok.Out);
        Assert.That(ok.Out, Does.Contain("PASS").And.Contain("seg_multi").And.Contain("greedy_ids"));

        // float rounding alone exceeds 1e-9: verify must notice and exit 1
        var strict = Run("verify", "--model", tmp.Sub("m"), "--reference", Path.Combine(ckpt, "reference.safetensors"), "--atol", "1e-9", "--rtol", "0");
        Assert.That(strict.Code, Is.EqualTo(1), strict.Out);
        Assert.That(strict.Out, Does.Contain("FAIL"));
    }

    [Test]
    public void RandomWeightExportNeedsNoCheckpointAndRuns()
    {
        using var tmp = TestPaths.Temp();
        var export = Run("export", "--random-weights", "--preset", "xlstm-tiny", "--num-blocks", "1", "--output", tmp.Sub("m"));
        Assert.That(export.Code, Is.Zero, export.Out + export.Err);
        var inspect = Run("inspect", "--model", tmp.Sub("m"), "--run", "20");
        Assert.That(inspect.Code, Is.Zero, inspect.Out + inspect.Err);
        Assert.That(inspect.Out, Does.Contain("layers 1").And.Contain("ran 20 tokens"));
        var unknown = Run("export", "--random-weights", "--preset", "xlstm-huge", "--output", tmp.Sub("x"));
        Assert.That(unknown.Err, Does.Contain("xlstm-huge").And.Contain("xlstm-7b"), "lists the known presets");
    }

    [Test]
    public void BenchPrintsATableAndWritesJson()
    {
        using var tmp = TestPaths.Temp();
        Assert.That(Run("export", "--random-weights", "--preset", "xlstm-tiny", "--output", tmp.Sub("m"), "--last-logits-only").Code, Is.Zero);
        var r = Run("bench", "--model", tmp.Sub("m"), "--batch", "1,3", "--prompt", "40", "--new", "8", "--out", tmp.Sub("b.json"));
        Assert.That(r.Code, Is.Zero, r.Out + r.Err);
        Assert.That(r.Out, Does.Contain("prefill tok/s").And.Contain("decode tok/s"));
        var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(tmp.Sub("b.json"))).RootElement;
        var rows = json.GetProperty("results").EnumerateArray().ToList();
        Assert.That(rows.Select(x => x.GetProperty("batch").GetInt32()), Is.EqualTo(new[] { 1, 3 }));
        Assert.That(rows.All(x => x.GetProperty("decode_tokens_per_s").GetDouble() > 0 && x.GetProperty("ttft_ms").GetDouble() > 0));
        Assert.That(json.GetProperty("model").GetProperty("num_layers").GetInt32(), Is.EqualTo(2));
    }

    [Test]
    public void RandomWeightsAreAFunctionOfTheIndex()
    {
        var w = new GraphBuilder.Checkpoint.RandomWeight("t", [1000], 42, 0, 1);
        var whole = new float[1000];
        w.ReadFloat32(0, whole);
        var part = new float[300];
        w.ReadFloat32(500, part);
        Assert.That(part, Is.EqualTo(whole[500..800]), "any block, read in any order, gives the same values");
        Assert.That(whole.Average(), Is.InRange(-0.15, 0.15));
        Assert.That(Math.Sqrt(whole.Select(x => x * x).Average()), Is.InRange(0.9, 1.1), "unit variance");
    }

    [Test]
    public void BadInputIsOneLineWithExitCode2()
    {
        var r = Run("verify", "--model", "/nonexistent/model", "--reference", "x.safetensors");
        Assert.That(r.Code, Is.EqualTo(2));
        Assert.That(r.Out + r.Err, Does.Contain("xlstm_runtime.json is missing"));
    }

    [Test]
    public void UnknownDtypeIsRefusedByTheParser()
    {
        var r = Run("export", "--checkpoint", "a", "--output", "b", "--dtype", "int3");
        Assert.That(r.Code, Is.Not.Zero);
        Assert.That(r.Out + r.Err, Does.Contain("int3"));
    }
}
