using Microsoft.ML.OnnxRuntime;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>
/// The CUDA execution provider: every fixture verifies, and greedy generation equals the CPU. Skipped where ONNX
/// Runtime's CUDA provider cannot start (no GPU or no CUDA 13 libraries). On the H200 the same checks run through the
/// published CLI (tools/gpu/check_cuda.sh; results in tools/gpu/results/).
/// </summary>
[TestFixture]
[Category("Gpu")]
public class CudaTests
{
    private static readonly Lazy<string?> Unavailable = new(() =>
    {
        try
        {
            using var so = new SessionOptions();
            XLstmSession.AppendCuda(so, 0);
            return null;
        }
        catch (Exception e) when (e is OnnxRuntimeException or DllNotFoundException or EntryPointNotFoundException)
        {
            return e.Message;
        }
    });

    [SetUp]
    public void RequireCuda()
    {
        if (Unavailable.Value is { } why)
        {
            // Ignore (reported as skipped), not Assume (inconclusive): CI counts these as skipped with this reason
            string missing = why.Contains("cannot open shared object file", StringComparison.Ordinal) ? why[(why.LastIndexOf("error: ", StringComparison.Ordinal) + 7)..].Split(':')[0] : why.Split('\n')[0];
            Assert.Ignore($"No CUDA device: ONNX Runtime's CUDA execution provider cannot start here ({missing}).");
        }
    }

    [TestCaseSource(typeof(FixtureTests), nameof(FixtureTests.Fixtures))]
    public void FixtureVerifiesOnCuda(string dir)
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(dir, tmp.Sub("m"), new ExportOptions());
        using var session = XLstmSession.Load(tmp.Sub("m"), new RuntimeOptions { Device = ExecutionDevice.Cuda });
        var results = ReferenceVerifier.Verify(session, Path.Combine(dir, "reference.safetensors"), 1e-4, 1e-3);
        Assert.That(results.Where(r => !r.Passed).Select(r => $"{r.Case} {r.Check} {r.MaxAbsError:E2}"), Is.Empty);
    }

    /// <summary>
    /// bf16 (8-bit significand) against transformers' fp32 references, as measured on the H200 (tools/gpu/results/cuda-bf16.txt):
    /// the random fixtures' greedy tokens stay equal (their logits move by up to 12: they are built to stress gates and caps);
    /// the shipped model's logits move by 0.20 (onnx cell) / 0.30 (custom ops), so its greedy tokens are only equal with
    /// the custom ops (with the standard-op cell 23 of the 40 greedy tokens differ: the reference's top-2 gaps are below bf16's error).
    /// </summary>
    [TestCase("single_basic", MLstmKernels.Onnx)]
    [TestCase("fused_bias", MLstmKernels.Onnx)]
    [TestCase("tied_dims", MLstmKernels.Onnx)]
    [TestCase("segmented", MLstmKernels.Onnx)]
    [TestCase("segmented", MLstmKernels.Custom)]
    public void Bf16GreedyTokensEqualTransformersOnCuda(string fixture, MLstmKernels kernels)
    {
        string dir = Path.Combine(TestPaths.Fixtures, fixture);
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(dir, tmp.Sub("m"), new ExportOptions { Dtype = WeightDtype.Bf16, MLstmKernels = kernels });
        using var session = XLstmSession.Load(tmp.Sub("m"), new RuntimeOptions { Device = ExecutionDevice.Cuda });
        var greedy = ReferenceVerifier.Verify(session, Path.Combine(dir, "reference.safetensors"), double.PositiveInfinity, 0).Where(r => r.Check == "greedy_ids");
        Assert.That(greedy.Select(r => r.Violations), Is.All.Zero);
    }

    [Test]
    public void Bf16ShippedModelLogitsOnCuda()
    {
        string dir = Path.Combine(TestPaths.RepoRoot, "models", "kjv-xlstm");
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(dir, tmp.Sub("m"), new ExportOptions { Dtype = WeightDtype.Bf16 });
        using var session = XLstmSession.Load(tmp.Sub("m"), new RuntimeOptions { Device = ExecutionDevice.Cuda });
        // measured 0.20; 0.5 leaves room for another kernel choice, and is far below what a wrong graph gives (several units)
        var logits = ReferenceVerifier.Verify(session, Path.Combine(dir, "reference.safetensors"), 0.5, 0).Where(r => r.Check.Contains("logits", StringComparison.Ordinal));
        Assert.That(logits.Select(r => r.Violations), Is.All.Zero);
    }

    [Test]
    public void BatchedGreedyOnCudaEqualsCpu()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "segmented"), tmp.Sub("m"), new ExportOptions());
        int[][] prompts = [[5, 6, 7], [.. Enumerable.Range(10, 45)], [42]];
        var o = new GenerationOptions { Greedy = true, MaxNewTokens = 12, IgnoreEos = true };
        int[][] Run(ExecutionDevice device)
        {
            using var s = XLstmSession.Load(tmp.Sub("m"), new RuntimeOptions { Device = device });
            using var g = new Generator(s, prompts.Length);
            return g.Generate(prompts, o).Tokens;
        }
        Assert.That(Run(ExecutionDevice.Cuda), Is.EqualTo(Run(ExecutionDevice.Cpu)));
    }

    /// <summary>
    /// CUDA graphs replay what they captured: generators of different batch sizes on one session must each get graphs of
    /// their own (an earlier build let a batch-16 generator replay the batch-1 graph), and greedy tokens must equal
    /// uncaptured steps, with the device argmax and with logits copied back.
    /// </summary>
    [Test]
    public void CudaGraphDecodeEqualsUncapturedStepsForEveryGenerator()
    {
        _ = CustomOpLibrary.Find() ?? throw new AssertionException($"{CustomOpLibrary.FileName} is not beside the tests (CUDA build of customops/).");
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "segmented"), tmp.Sub("m"),
            new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true });
        int[][] prompts = [[5, 6, 7], [.. Enumerable.Range(10, 45)], [42]];
        var o = new GenerationOptions { Greedy = true, MaxNewTokens = 12, IgnoreEos = true };
        int[][][] Run(bool graph)
        {
            using var s = XLstmSession.Load(tmp.Sub("m"), new RuntimeOptions { Device = ExecutionDevice.Cuda, CudaGraph = graph });
            return [.. new[] { 1, 3 }.Select(batch =>
            {
                using var g = new Generator(s, batch);
                return g.Generate(prompts[..batch], o).Tokens;
            })];
        }
        Assert.That(Run(graph: true), Is.EqualTo(Run(graph: false)));
    }

    /// <summary>
    /// The serving engine on the GPU, with CUDA graphs per decode batch size: every stream under load (greedy, sampled,
    /// penalised; rows joining, moving and leaving; prompts read in pieces) equals the same request served alone, and
    /// the greedy ones equal the CPU engine's. With the mixed graph, prompts are read inside the decode steps, each
    /// (batch size, state set, piece shape) a captured graph of the mixed session.
    /// </summary>
    [Test]
    public void ServingOnCudaWithGraphsEqualsServedAloneAndTheCpu() => ServeOnCudaAndCpu(mixedSteps: false, padPrompts: false);

    /// <summary>The same with prompts read inside decode steps (the mixed graph, captured per batch size, set and piece shape).</summary>
    [Test]
    public void ServingMixedStepsOnCudaEqualsServedAloneAndTheCpu() => ServeOnCudaAndCpu(mixedSteps: true, padPrompts: false);

    /// <summary>The same with prompts padded to whole chunks (a fixture of one segment; the CPU engine asked to pad too).</summary>
    [Test]
    public void ServingWholeChunkPromptsOnCudaEqualsServedAloneAndTheCpu() => ServeOnCudaAndCpu(mixedSteps: false, padPrompts: true);

    /// <summary>Whole-chunk prompts read inside decode steps, two prompts a step when they wait.</summary>
    [Test]
    public void ServingWholeChunkMixedStepsOnCudaEqualsServedAloneAndTheCpu() => ServeOnCudaAndCpu(mixedSteps: true, padPrompts: true);

    private static void ServeOnCudaAndCpu(bool mixedSteps, bool padPrompts)
    {
        _ = CustomOpLibrary.Find() ?? throw new AssertionException($"{CustomOpLibrary.FileName} is not beside the tests (CUDA build of customops/).");
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, padPrompts ? "fused_bias" : "segmented"), tmp.Sub("m"),
            new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true, MixedGraph = mixedSteps });
        var rng = new Random(5);
        var cases = Enumerable.Range(0, 24).Select(i => (
            Prompt: Enumerable.Range(0, 1 + rng.Next(60)).Select(_ => 3 + rng.Next(95)).ToArray(),
            Options: ((i % 4) switch
            {
                0 => new GenerationOptions { Temperature = 1.1, TopK = 20, TopP = 0.9, Seed = (ulong)i },
                1 => new GenerationOptions { Greedy = true, RepetitionPenalty = 1.2 },
                _ => new GenerationOptions { Greedy = true },
            }) with { MaxNewTokens = 6 + rng.Next(20), IgnoreEos = true })).ToArray();
        var options = new Runtime.Serving.ServingOptions
        {
            MaxBatch = 8, PrefillRows = 2, PrefillChunkTokens = 8, MixedSteps = mixedSteps ? true : null, MixedPromptRows = 2,
        };
        int[][] Serve(ExecutionDevice device, bool alone)
        {
            string what = $"{device}, {(alone ? "alone" : "under load")}";
            using var s = XLstmSession.Load(tmp.Sub("m"), new RuntimeOptions { Device = device, CudaGraph = device == ExecutionDevice.Cuda });
            // on CUDA padding is left to choose (auto pads there: the README's default); the CPU engine is asked to pad
            bool? pad = device == ExecutionDevice.Cuda && padPrompts ? null : padPrompts;
            using var engine = new Runtime.Serving.ServingEngine(s, options with { PrefixCacheBytes = alone ? 0 : null, PadPrompts = pad });
            TestContext.Progress.WriteLine($"{what}: engine started (graphs captured)");
            // a stream that never ends fails here with where the engine stood, instead of hanging the test run
            int[] Collect(int i, System.Threading.Channels.ChannelReader<Runtime.Serving.CompletionEvent> r)
            {
                var read = Task.Run(() => r.ReadAllAsync().ToBlockingEnumerable().Select(e => e.Token).ToArray());
                if (!read.Wait(TimeSpan.FromSeconds(60)))
                {
                    Assert.Fail($"{what}: request {i} (prompt of {cases[i].Prompt.Length}) did not end within 60 s; {engine.Metrics.FinishedRequests} finished, "
                        + $"{engine.Metrics.MixedSteps} mixed steps, steps by batch {string.Join(",", engine.StepsByBatch.Select(kv => $"{kv.Key}:{kv.Value}"))}");
                }
                return read.Result;
            }
            if (alone) return [.. cases.Select((c, i) => Collect(i, engine.Submit(c.Prompt, c.Options)))];
            var readers = cases.Select(c => engine.Submit(c.Prompt, c.Options)).ToArray();
            int[][] tokens = [.. readers.Select((r, i) => Collect(i, r))];
            TestContext.Progress.WriteLine($"{what}: {tokens.Length} requests served, {engine.Metrics.MixedSteps} mixed steps");
            if (mixedSteps) Assert.That(engine.Metrics.MixedSteps, Is.GreaterThan(0), $"prompts were read inside decode steps on {device}");
            if (mixedSteps && device == ExecutionDevice.Cuda) Assert.That(s.MixedCaptureError, Is.Null, "the mixed graph is captured");
            Assert.That(engine.PadPrompts, Is.EqualTo(padPrompts));
            return tokens;
        }
        var loaded = Serve(ExecutionDevice.Cuda, alone: false);
        Assert.That(loaded, Is.EqualTo(Serve(ExecutionDevice.Cuda, alone: true)), "under load equals alone, on the GPU");
        var cpu = Serve(ExecutionDevice.Cpu, alone: false);
        for (int i = 0; i < cases.Length; i++)
        {
            if (cases[i].Options.Greedy) Assert.That(loaded[i], Is.EqualTo(cpu[i]), $"request {i}: greedy on the GPU equals the CPU");
        }
    }

    /// <summary>
    /// On CUDA, a mixed graph ONNX Runtime cannot open (here: not a model; on a small GPU: no room for its copy of the
    /// weights) is skipped when MixedSteps is left to choose: prompts are read between steps and the reason is kept.
    /// </summary>
    [Test]
    public void AMixedGraphThatCannotBeOpenedIsSkippedOnCudaWhenLeftToChoose()
    {
        _ = CustomOpLibrary.Find() ?? throw new AssertionException($"{CustomOpLibrary.FileName} is not beside the tests (CUDA build of customops/).");
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "segmented"), tmp.Sub("m"),
            new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true, MixedGraph = true });
        File.WriteAllText(Path.Combine(tmp.Sub("m"), OnnxExporter.MixedModelFile), "not an ONNX model");
        using var s = XLstmSession.Load(tmp.Sub("m"), new RuntimeOptions { Device = ExecutionDevice.Cuda, CudaGraph = true });
        using var engine = new Runtime.Serving.ServingEngine(s, new Runtime.Serving.ServingOptions { MaxBatch = 2 });
        Assert.That(engine.MixedSteps, Is.False);
        Assert.That(engine.MixedStepsError, Does.Contain(OnnxExporter.MixedModelFile));
        var tokens = engine.Submit([5, 6, 7], new GenerationOptions { Greedy = true, MaxNewTokens = 3 }).ReadAllAsync().ToBlockingEnumerable().Count();
        Assert.That(tokens, Is.EqualTo(3));
    }

    /// <summary>
    /// bfloat16 with ai.xlstm::Linear in batch-invariant mode: greedy streams served under load, at decode batch sizes
    /// 1 to 32 as rows come and go, equal the same requests served alone, token for token. With ONNX Gemm (cuBLAS) they
    /// need not: its small-batch kernels sum in another order at each batch size.
    /// </summary>
    [Test]
    public void Bf16ServingWithTheLinearOpIsBatchInvariantOnCuda()
    {
        _ = CustomOpLibrary.Find() ?? throw new AssertionException($"{CustomOpLibrary.FileName} is not beside the tests (CUDA build of customops/).");
        using var tmp = TestPaths.Temp();
        var result = OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "segmented"), tmp.Sub("m"),
            new ExportOptions { Dtype = WeightDtype.Bf16, MLstmKernels = MLstmKernels.Custom, LinearKernels = LinearKernels.BatchInvariant, LastLogitsOnly = true, NextToken = true });
        var model = XLstmOnnx.GraphBuilder.Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes(result.ModelPath));
        Assert.That(model.Graph.Node.Where(n => n.OpType == CustomOps.Linear).Select(n => n.Attribute.Single(a => a.Name == "batch_invariant").I),
            Is.Not.Empty.And.All.EqualTo(1));
        var rng = new Random(11);
        var cases = Enumerable.Range(0, 40).Select(i => (
            Prompt: Enumerable.Range(0, 1 + rng.Next(40)).Select(_ => 3 + rng.Next(95)).ToArray(),
            Options: new GenerationOptions { Greedy = true, MaxNewTokens = 10 + rng.Next(30), IgnoreEos = true })).ToArray();
        static int[] Collect(System.Threading.Channels.ChannelReader<Runtime.Serving.CompletionEvent> r) =>
            r.ReadAllAsync().ToBlockingEnumerable().Select(e => e.Token).ToArray();
        var options = new Runtime.Serving.ServingOptions { MaxBatch = 32 };
        int[][] Serve(bool alone)
        {
            using var s = XLstmSession.Load(tmp.Sub("m"), new RuntimeOptions { Device = ExecutionDevice.Cuda, CudaGraph = true });
            using var engine = new Runtime.Serving.ServingEngine(s, options with { PrefixCacheBytes = alone ? 0 : null });
            if (alone) return [.. cases.Select(c => Collect(engine.Submit(c.Prompt, c.Options)))];
            var readers = cases.Select(c => engine.Submit(c.Prompt, c.Options)).ToArray();
            return [.. readers.Select(Collect)];
        }
        var loaded = Serve(alone: false);
        var alone = Serve(alone: true);
        for (int i = 0; i < cases.Length; i++) Assert.That(loaded[i], Is.EqualTo(alone[i]), $"request {i}: under load equals alone");
    }

    /// <summary>
    /// --state-dtype bf16 on the GPU: the step kernel reads and writes bfloat16 C and n itself, prompts go through float32
    /// copies rounded after every piece. On the shipped (trained) model greedy decoding with CUDA graphs, batched, equals
    /// the CPU's bf16-state export (the CPU rounds the same float32 results; a trained model's top two logits are far
    /// apart next to a bfloat16 step). Passed on the H200 (tools/serve/results/run5).
    /// </summary>
    [Test]
    public void Bf16StateGreedyOnCudaEqualsTheCpu()
    {
        _ = CustomOpLibrary.Find() ?? throw new AssertionException($"{CustomOpLibrary.FileName} is not beside the tests (CUDA build of customops/).");
        using var tmp = TestPaths.Temp();
        string model = StateDtypeTests.ExportShippedWithBf16State(tmp);
        int[][] prompts = [[297, 387, 389], [.. Enumerable.Range(300, 45)], [42]];
        var o = new GenerationOptions { Greedy = true, MaxNewTokens = 32, IgnoreEos = true };
        int[][] Run(ExecutionDevice device)
        {
            using var s = XLstmSession.Load(model, new RuntimeOptions { Device = device, CudaGraph = device == ExecutionDevice.Cuda });
            Assert.That(s.Manifest.StateDtype, Is.EqualTo(StateDtype.Bf16));
            using var g = new Generator(s, prompts.Length);
            return g.Generate(prompts, o).Tokens;
        }
        Assert.That(Run(ExecutionDevice.Cuda), Is.EqualTo(Run(ExecutionDevice.Cpu)), "bf16-state greedy tokens, GPU (CUDA graphs) and CPU");
    }

    /// <summary>
    /// Streams served under load with a bf16 state on the GPU equal the same requests alone (rows never mix; prompts are
    /// read in pieces on piece boundaries, which a bf16 state makes exact). OPEN: on the H200 on 2026-11-29 this test's
    /// process hung once and crashed (SIGSEGV) once while serving under load, after the generation test above had run in
    /// the same process; `serve` on the same export (6 configurations, 8 clients) and on xLSTM-7b with a bf16 state
    /// (64 clients, 256 requests of 1,024 tokens) ran clean. The same test on the CPU passes
    /// (StateDtypeTests.ServingTheShippedModelWithABf16StateUnderLoadEqualsAlone). Explicit until that is understood.
    /// </summary>
    [Test]
    [Explicit("hung or crashed on the H200 on 2026-11-29; see the summary")]
    public void Bf16StateServingOnCudaEqualsServedAlone()
    {
        _ = CustomOpLibrary.Find() ?? throw new AssertionException($"{CustomOpLibrary.FileName} is not beside the tests (CUDA build of customops/).");
        using var tmp = TestPaths.Temp();
        string model = StateDtypeTests.ExportShippedWithBf16State(tmp);
        int[][] Serve(bool alone)
        {
            using var s = XLstmSession.Load(model, new RuntimeOptions { Device = ExecutionDevice.Cuda, CudaGraph = true });
            return StateDtypeTests.ServeShipped(s, alone);
        }
        TestContext.Progress.WriteLine("bf16 state: serving under load on CUDA");
        var loaded = Serve(alone: false);
        TestContext.Progress.WriteLine("bf16 state: serving alone on CUDA");
        Assert.That(loaded, Is.EqualTo(Serve(alone: true)), "bf16 state on the GPU: under load equals alone");
    }

    /// <summary>The exported sampler on the GPU chooses what it chooses on the CPU, for the same logits and draws.</summary>
    [Test]
    public void SamplerOnCudaEqualsCpu()
    {
        const int vocab = 50304, batch = 64;
        var rng = new Random(3);
        var logits = new float[batch * vocab];
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)(rng.NextDouble() * 8 - 4);
        var parameters = new double[batch * SamplerModel.ParamCount];
        var counts = new float[batch * vocab];
        var outputCounts = new float[batch * vocab];
        var bias = new float[batch * vocab];
        for (int r = 0; r < batch; r++)
        {
            var o = new GenerationOptions { Temperature = 0.6 + r % 5 * 0.2, TopK = r % 3 == 0 ? 50 : 0, TopP = r % 2 == 0 ? 0.9 : 1.0, MinP = r % 4 == 0 ? 0.05 : 0, RepetitionPenalty = r % 5 == 0 ? 1.2 : 1,
                PresencePenalty = r % 6 == 0 ? 0.8 : 0, FrequencyPenalty = r % 4 == 1 ? 0.5 : 0, Greedy = r % 7 == 0, Seed = (ulong)r };
            new SequenceDecoder(o, new ModelManifest(), null, false).WriteParams(parameters.AsSpan(r * SamplerModel.ParamCount, SamplerModel.ParamCount));
            for (int k = 0; k < 30; k++) counts[r * vocab + rng.Next(vocab)]++;
            for (int k = 0; k < 10; k++) outputCounts[r * vocab + rng.Next(vocab)]++;
            if (r % 3 == 1) for (int k = 0; k < 8; k++) bias[r * vocab + rng.Next(vocab)] = (float)(rng.NextDouble() * 10 - 5);
        }
        (long[] Next, long[] TopIds) Run(bool cuda)
        {
            using var so = new SessionOptions();
            if (cuda) XLstmSession.AppendCuda(so, 0);
            using var session = new InferenceSession(SamplerBuilder.Build(vocab), so);
            using var l = OrtValue.CreateTensorValueFromMemory(logits, [batch, 1, vocab]);
            using var p = OrtValue.CreateTensorValueFromMemory(parameters, [batch, SamplerModel.ParamCount]);
            using var c = OrtValue.CreateTensorValueFromMemory(counts, [batch, vocab]);
            using var o = OrtValue.CreateTensorValueFromMemory(outputCounts, [batch, vocab]);
            using var b = OrtValue.CreateTensorValueFromMemory(bias, [batch, vocab]);
            using var v = OrtValue.CreateTensorValueFromMemory(new long[] { vocab }, [1]);
            using var run = new RunOptions();
            using var outputs = session.Run(run, [SamplerModel.Logits, SamplerModel.Params, SamplerModel.Counts, SamplerModel.OutputCounts, SamplerModel.Bias, SamplerModel.VocabLimit],
                [l, p, c, o, b, v], [SamplerModel.NextToken, SamplerModel.TopIds]);
            return (outputs[0].GetTensorDataAsSpan<long>().ToArray(), outputs[1].GetTensorDataAsSpan<long>().ToArray());
        }
        var (gpu, gpuTop) = Run(cuda: true);
        var (cpu, cpuTop) = Run(cuda: false);
        Assert.That(gpu, Is.EqualTo(cpu));
        Assert.That(gpuTop, Is.EqualTo(cpuTop), "the top ids (logprobs) too");
    }

    /// <summary>
    /// A row whose logits are NaN ends with an error naming it on CUDA too, on every path that chooses a token (the
    /// checks run inside the model's and the sampler's graphs, on the device): <see cref="NonFiniteTests"/> on the CPU.
    /// </summary>
    [TestCaseSource(typeof(NonFiniteTests), nameof(NonFiniteTests.Paths))]
    public void ARowWithNonFiniteLogitsEndsWithAnErrorOnCuda(ExportOptions export, GenerationOptions options)
    {
        using var tmp = TestPaths.Temp();
        using var session = XLstmSession.Load(NonFiniteTests.PoisonedExport(tmp, export), new RuntimeOptions { Device = ExecutionDevice.Cuda });
        NonFiniteTests.AssertEndsRowOne(session, options);
    }

    [Test]
    public void ARowWithNonFiniteLogitsEndsWithAnErrorUnderCudaGraphs()
    {
        using var tmp = TestPaths.Temp();
        string model = NonFiniteTests.PoisonedExport(tmp, new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true });
        using var session = XLstmSession.Load(model, new RuntimeOptions { Device = ExecutionDevice.Cuda, CudaGraph = true });
        NonFiniteTests.AssertEndsRowOne(session, new GenerationOptions { Greedy = true, MaxNewTokens = 4 });
        NonFiniteTests.AssertEndsRowOne(session, new GenerationOptions { Temperature = 0.7, Seed = 5, MaxNewTokens = 4 });
    }
}
