using Microsoft.ML.OnnxRuntime;
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
        OnnxExporter.Export(dir, tmp.Sub("m"), new ExportOptions { Dtype = "bf16", MLstmKernels = kernels });
        using var session = XLstmSession.Load(tmp.Sub("m"), new RuntimeOptions { Device = ExecutionDevice.Cuda });
        var greedy = ReferenceVerifier.Verify(session, Path.Combine(dir, "reference.safetensors"), double.PositiveInfinity, 0).Where(r => r.Check == "greedy_ids");
        Assert.That(greedy.Select(r => r.Violations), Is.All.Zero);
    }

    [Test]
    public void Bf16ShippedModelLogitsOnCuda()
    {
        string dir = Path.Combine(TestPaths.RepoRoot, "models", "kjv-xlstm");
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(dir, tmp.Sub("m"), new ExportOptions { Dtype = "bf16" });
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
}
