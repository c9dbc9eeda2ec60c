using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;

namespace XLstmOnnx.Tests;

/// <summary>
/// fp16 exports (weights and activations float16; gates, state, norm statistics and logits float32) against transformers'
/// float32 references, on the CPU. bf16 exports need the CUDA EP (ONNX Runtime's CPU EP has no bf16 Gemm): CudaTests.
/// </summary>
[TestFixture]
public class PrecisionTests
{
    [TestCaseSource(typeof(FixtureTests), nameof(FixtureTests.Fixtures))]
    public void Fp16GreedyTokensEqualTransformers(string dir)
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(dir, tmp.Sub("m"), new ExportOptions { Dtype = "fp16" });
        using var session = XLstmSession.Load(tmp.Sub("m"));
        // logits are far from fp32 here (no tolerance asked of them: the random fixtures are built to stress gates and
        // caps), but greedy decoding must pick the same tokens: every fixture's greedy case has a top-1/top-2 gap >= 0.07
        var greedy = ReferenceVerifier.Verify(session, Path.Combine(dir, "reference.safetensors"), double.PositiveInfinity, 0)
            .Where(r => r.Check == "greedy_ids").ToList();
        Assert.That(greedy, Is.Not.Empty);
        Assert.That(greedy.Select(r => r.Violations), Is.All.Zero, string.Join("; ", greedy.Select(r => r.Note)));
    }

    [Test]
    public void Fp16ShippedModelLogitsWithinFp16Rounding()
    {
        string dir = Path.Combine(TestPaths.RepoRoot, "models", "kjv-xlstm");
        using var tmp = TestPaths.Temp();
        var result = OnnxExporter.Export(dir, tmp.Sub("m"), new ExportOptions { Dtype = "fp16" });
        Assert.That(result.WeightBytes, Is.LessThan(4_000_000), "weights stored as 2-byte floats (3.8 MB of fp16 in the checkpoint, gates 4 bytes)");
        using var session = XLstmSession.Load(tmp.Sub("m"));
        // observed max |error| 2.6e-2 on logits of magnitude up to ~17: fp16's 11-bit significand through 3 blocks; 5e-2 is twice that
        var results = ReferenceVerifier.Verify(session, Path.Combine(dir, "reference.safetensors"), 5e-2, 0);
        Assert.That(results.Where(r => r.Check.Contains("logits", StringComparison.Ordinal)).Select(r => $"{r.Case} {r.Check} {r.MaxAbsError:E2} {r.Violations}"),
            Has.All.EndWith(" 0"));
        Assert.That(results.Single(r => r.Check == "greedy_ids").Violations, Is.Zero);
    }
}
