using System.Buffers.Binary;
using System.Text.Json;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// NaN and ±Inf: the export refuses non-finite weights (naming the tensor and the index) unless told otherwise; a state
/// file with them is refused; and at run time a row whose logits are not finite ends with an error naming it, on every
/// path that chooses a token (host argmax, the model's next_token, the sampler, the serving engine), while other rows go on.
/// </summary>
[TestFixture]
public class NonFiniteTests
{
    private static string Fixture => Path.Combine(TestPaths.Fixtures, "single_basic");

    /// <summary>A token whose embedding row <see cref="Poisoned"/> sets to NaN: prompts with it have NaN logits, others do not.</summary>
    internal const int PoisonedToken = 5;

    /// <summary>
    /// A copy of <paramref name="fixture"/> with <paramref name="value"/> written at element <paramref name="index"/> of
    /// tensor <paramref name="tensor"/> of its model.safetensors (F32).
    /// </summary>
    internal static string Poisoned(TempDir tmp, string fixture, string tensor, long index, float value)
    {
        string dir = tmp.Sub("poisoned");
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.EnumerateFiles(fixture)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        string file = Path.Combine(dir, "model.safetensors");
        byte[] bytes = File.ReadAllBytes(file);
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        using var header = JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength));
        var entry = header.RootElement.GetProperty(tensor);
        Assert.That(entry.GetProperty("dtype").GetString(), Is.EqualTo("F32"));
        long at = 8 + headerLength + entry.GetProperty("data_offsets")[0].GetInt64() + index * 4;
        BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan((int)at, 4), value);
        File.WriteAllBytes(file, bytes);
        return dir;
    }

    /// <summary>The fixture with NaN across the embedding of <see cref="PoisonedToken"/> (128 wide), exported with --allow-non-finite.</summary>
    internal static string PoisonedExport(TempDir tmp, ExportOptions options)
    {
        string dir = Poisoned(tmp, Fixture, "backbone.embeddings.weight", PoisonedToken * 128L, float.NaN);
        string model = tmp.Sub("m");
        OnnxExporter.Export(dir, model, options with { AllowNonFinite = true });
        return model;
    }

    [TestCase("lm_head.weight", 3 * 128 + 17, float.NaN, "[3, 17] (flat index 401) of [100, 128] is NaN")]
    [TestCase("backbone.blocks.0.mlstm_layer.q.weight", 64 * 128 - 1, float.PositiveInfinity, "[63, 127] (flat index 8191) of [64, 128] is +Inf")]
    [TestCase("backbone.blocks.0.norm_ffn.weight", 0, float.NegativeInfinity, "[0] (flat index 0) of [128] is -Inf")]
    public void ExportRefusesNonFiniteWeightsNamingTheTensorAndIndex(string tensor, long index, float value, string expected)
    {
        using var tmp = TestPaths.Temp();
        string dir = Poisoned(tmp, Fixture, tensor, index, value);
        foreach (var options in new[] { new ExportOptions(), new ExportOptions { QuantizeBits = 4, QuantizeBlockSize = 16 } })
        {
            var e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(dir, tmp.Sub("m"), options))!;
            Assert.That(e.Message, Does.Contain($"tensor '{tensor}': element {expected}").And.Contain("ExportOptions.AllowNonFinite"), options.ToString());
            Assert.That(Directory.Exists(tmp.Sub("m")), Is.False, "nothing exported");
        }
        OnnxExporter.Export(dir, tmp.Sub("m"), new ExportOptions { AllowNonFinite = true });
        Assert.That(File.Exists(Path.Combine(tmp.Sub("m"), OnnxExporter.ModelFile)), "--allow-non-finite exports it anyway");
    }

    [Test]
    public void TheCliNamesTheFlagThatOverrides()
    {
        using var tmp = TestPaths.Temp();
        string dir = Poisoned(tmp, Fixture, "lm_head.weight", 5, float.NaN);
        var r = CliTests.Run("export", "--checkpoint", dir, "--output", tmp.Sub("m"));
        Assert.That(r.Code, Is.EqualTo(2));
        Assert.That(r.Err, Does.Contain("tensor 'lm_head.weight': element [0, 5]").And.Contain("--allow-non-finite"));
        Assert.That(CliTests.Run("export", "--checkpoint", dir, "--output", tmp.Sub("m"), "--allow-non-finite").Code, Is.Zero);
    }

    [Test]
    public void StateFilesWithNonFiniteValuesAreRefused()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Fixture, tmp.Sub("m"), new ExportOptions());
        using var session = XLstmSession.Load(tmp.Sub("m"));
        using var g = new Generator(session, 1);
        g.Append([1, 2, 3]);
        g.Snapshot().Save(tmp.Sub("s.safetensors"));
        Assert.That(StateSnapshot.Load(tmp.Sub("s.safetensors"), session.Manifest).Batch, Is.EqualTo(1));
        foreach (var (tensor, value) in new[] { ("state.0.C", float.NaN), ("state.0.m", float.PositiveInfinity), ("state.0.n", float.NegativeInfinity) })
        {
            string bad = tmp.Sub($"bad-{tensor}.safetensors");
            File.Copy(tmp.Sub("s.safetensors"), bad, overwrite: true);
            Overwrite(bad, tensor, 2, value);
            var e = Assert.Throws<XLstmOnnxException>(() => StateSnapshot.Load(bad, session.Manifest))!;
            Assert.That(e.Message, Does.Contain(bad).And.Contain($"tensor '{tensor}'").And.Contain("flat index 2").And.Contain("must be finite"));
        }
    }

    [Test]
    public void AStateWhosePendingTokenIsOutsideTheVocabularyIsRefused()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Fixture, tmp.Sub("m"), new ExportOptions());
        using var session = XLstmSession.Load(tmp.Sub("m"));
        using var g = new Generator(session, 1);
        g.Generate([[1, 2, 3]], new GenerationOptions { MaxNewTokens = 2, Greedy = true });
        g.Snapshot().Save(tmp.Sub("s.safetensors"));
        foreach (long pending in new[] { session.Manifest.VocabSize, 1L << 40, -2 })
        {
            OverwriteI64(tmp.Sub("s.safetensors"), "pending", 0, pending);
            var e = Assert.Throws<XLstmOnnxException>(() => StateSnapshot.Load(tmp.Sub("s.safetensors"), session.Manifest))!;
            Assert.That(e.Message, Does.Contain($"tensor 'pending' row 0 is {pending}; expected -1 (none) or a token id in [0, {session.Manifest.VocabSize})"));
        }
    }

    private static long DataOffset(string file, string tensor)
    {
        byte[] bytes = File.ReadAllBytes(file);
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        using var header = JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength));
        return 8 + headerLength + header.RootElement.GetProperty(tensor).GetProperty("data_offsets")[0].GetInt64();
    }

    private static void Overwrite(string file, string tensor, long index, float value)
    {
        long at = DataOffset(file, tensor) + index * 4;
        byte[] bytes = File.ReadAllBytes(file);
        BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan((int)at, 4), value);
        File.WriteAllBytes(file, bytes);
    }

    private static void OverwriteI64(string file, string tensor, long index, long value)
    {
        long at = DataOffset(file, tensor) + index * 8;
        byte[] bytes = File.ReadAllBytes(file);
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan((int)at, 8), value);
        File.WriteAllBytes(file, bytes);
    }

    /// <summary>Each way a token is chosen: host argmax, the model's next_token, the sampler (sampling, and greedy with a penalty).</summary>
    internal static IEnumerable<TestCaseData> Paths()
    {
        yield return new TestCaseData(new ExportOptions(), new GenerationOptions { Greedy = true, MaxNewTokens = 4 }).SetName("host argmax");
        yield return new TestCaseData(new ExportOptions { LastLogitsOnly = true, NextToken = true }, new GenerationOptions { Greedy = true, MaxNewTokens = 4 })
            .SetName("model next_token");
        yield return new TestCaseData(new ExportOptions(), new GenerationOptions { Temperature = 0.8, Seed = 3, MaxNewTokens = 4 }).SetName("sampler, sampling");
        yield return new TestCaseData(new ExportOptions { LastLogitsOnly = true, NextToken = true },
            new GenerationOptions { Greedy = true, RepetitionPenalty = 1.2, MaxNewTokens = 4 }).SetName("sampler, greedy with a penalty");
    }

    [TestCaseSource(nameof(Paths))]
    public void ARowWithNonFiniteLogitsEndsWithAnErrorNamingIt(ExportOptions export, GenerationOptions options)
    {
        using var tmp = TestPaths.Temp();
        using var session = XLstmSession.Load(PoisonedExport(tmp, export));
        AssertEndsRowOne(session, options);
    }

    /// <summary>Row 1 reads the poisoned token, row 0 does not: the run fails naming row 1; row 0 alone generates.</summary>
    internal static void AssertEndsRowOne(XLstmSession session, GenerationOptions options)
    {
        // a finite row that chooses the poisoned token stops there, before reading it
        options = options with { StopTokenIds = [PoisonedToken] };
        using (var g = new Generator(session, 2))
        {
            var e = Assert.Throws<XLstmOnnxException>(() => g.Generate([[1, 2, 3], [1, PoisonedToken, 3]], options))!;
            Assert.That(e.Message, Does.StartWith("row 1: the model's logits hold NaN or infinite values after 0 generated tokens"));
        }
        using (var g = new Generator(session, 1))
        {
            var ok = g.Generate([[1, 2, 3]], options);
            Assert.That(ok.Tokens[0], Is.Not.Empty.And.All.GreaterThanOrEqualTo(0), "a finite row generates");
        }
        using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 2, WarmUp = false });
        var bad = engine.Submit([1, PoisonedToken, 3], options);
        var good = engine.Submit([1, 2, 3], options);
        var error = Assert.ThrowsAsync<XLstmOnnxException>(async () => { await foreach (var _ in bad.ReadAllAsync()) { } })!;
        Assert.That(error.Message, Does.Contain("the model's logits hold NaN or infinite values"));
        var tokens = good.ReadAllAsync().ToBlockingEnumerable().ToList();
        Assert.That(tokens, Is.Not.Empty, "the other request is served");
        Assert.That(tokens[^1].Finish, Is.Not.EqualTo(StopReason.None));
    }

    /// <summary>
    /// What the run-time check costs on the CPU: the check's own nodes (Mul by 0, ReduceSum, IsNaN: what the model's and
    /// the sampler's graphs gained) timed alone against the whole sampler run and the whole decode step of the shipped
    /// model, and the host scan against the copy of the row it scans. Minimum of many interleaved runs (the machine is
    /// shared): <c>dotnet test --filter NonFiniteCheckCost</c>.
    /// </summary>
    [Test]
    [Explicit("a benchmark: prints the cost of the non-finite check")]
    public void NonFiniteCheckCost()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.RepoRoot, "models", "kjv-xlstm"), tmp.Sub("m"), new ExportOptions { LastLogitsOnly = true, NextToken = true });
        using var session = XLstmSession.Load(tmp.Sub("m"), new RuntimeOptions { Threads = 1 });
        long v = session.Manifest.VocabSize;
        var g = new GraphBuilder.Graph.OnnxGraph("check");
        g.Input("x", GraphBuilder.Onnx.TensorProto.Types.DataType.Float, "batch", 1L, v);
        string bad = GraphBuilder.Architecture.XLstmGraphBuilder.NonFiniteRows(g, "/check", "x", 2);
        g.Output("bad", bad, GraphBuilder.Onnx.TensorProto.Types.DataType.Bool, "batch", 1L);
        var proto = new GraphBuilder.Onnx.ModelProto { IrVersion = ExportOptions.IrVersion, Graph = g.Proto };
        proto.OpsetImport.Add(new GraphBuilder.Onnx.OperatorSetIdProto { Domain = "", Version = ExportOptions.Opset });
        using var so = new Microsoft.ML.OnnxRuntime.SessionOptions { IntraOpNumThreads = 1 };
        using var check = new Microsoft.ML.OnnxRuntime.InferenceSession(Google.Protobuf.MessageExtensions.ToByteArray(proto), so);
        foreach (int batch in new[] { 1, 8 })
        {
            var x = Microsoft.ML.OnnxRuntime.OrtValue.CreateTensorValueFromMemory(new float[batch * v], [batch, 1, v]);
            using var run = new Microsoft.ML.OnnxRuntime.RunOptions();
            double Min(Action a, int reps)
            {
                for (int i = 0; i < 20; i++) a();
                double best = double.MaxValue;
                for (int i = 0; i < reps; i++)
                {
                    long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
                    a();
                    best = Math.Min(best, System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalMicroseconds);
                }
                return best;
            }
            using var gen = new Generator(session, batch);
            var ids = Enumerable.Range(0, batch).Select(r => (IReadOnlyList<int>)[1, 2, 3 + r]).ToArray();
            var greedy = new GenerationOptions { Greedy = true, MaxNewTokens = 1, IgnoreEos = true };
            var sampled = new GenerationOptions { Temperature = 0.8, Seed = 1, MaxNewTokens = 1, IgnoreEos = true };
            double checkUs = double.MaxValue, stepUs = double.MaxValue, samplerUs = double.MaxValue, scanUs = double.MaxValue, copyUs = double.MaxValue;
            var row = new float[v];
            var next = new int[batch];
            gen.Append(ids.Select(p => p.ToArray()).ToArray());
            for (int round = 0; round < 5; round++)
            {
                checkUs = Math.Min(checkUs, Min(() => { using var o = check.Run(run, ["x"], [x], ["bad"]); }, 400));
                // a decode step: one token per row read, then the device argmax (next_token)
                stepUs = Math.Min(stepUs, Min(() => { gen.Append(Enumerable.Range(0, batch).Select(_ => new[] { 7 }).ToArray()); gen.GreedyNext(next); }, 100));
                // a step's token choice through the sampler = generation of one token, minus the step above
                samplerUs = Math.Min(samplerUs, Min(() => gen.Generate(ids, sampled), 50));
                copyUs = Math.Min(copyUs, Min(() => gen.LastLogits(0).CopyTo(row), 400));
                scanUs = Math.Min(scanUs, Min(() => Sampler.AllFinite(row), 2000));
            }
            TestContext.Out.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"batch {batch}, V {v}: check nodes {checkUs:F1} us; decode step (model + next_token) {stepUs:F0} us ({100 * checkUs / stepUs:F2} %); "
                + $"prompt + sampled token {samplerUs:F0} us ({100 * checkUs / samplerUs:F2} %); host scan of one row {scanUs:F2} us beside its copy {copyUs:F2} us"));
            x.Dispose();
        }
    }
}
