using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>
/// Whole-chunk prompts (ServingOptions.PadPrompts; docs/serving.md, "Whole-chunk prompts"): a prompt read with masked
/// lead positions up to whole chunks runs the cell's chunkwise form only, where transformers' schedule runs chunks and
/// then recurrent steps. Masked positions are no-ops of the math in both forms, so the two readings give the same
/// logits and state up to float32 rounding, with the custom cell and with the standard-op graph.
/// </summary>
[TestFixture]
public class PaddedPromptTests
{
    // chunk_size 8, one segment of 16384
    private static readonly string Fixture = Path.Combine(TestPaths.Fixtures, "fused_bias");
    private static TempDir _tmp = null!;

    [OneTimeSetUp]
    public static void Export()
    {
        _tmp = TestPaths.Temp();
        OnnxExporter.Export(Fixture, _tmp.Sub("custom"), new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true });
        OnnxExporter.Export(Fixture, _tmp.Sub("onnx"), new ExportOptions());
    }

    [OneTimeTearDown]
    public static void Cleanup() => _tmp.Dispose();

    /// <summary>
    /// For prompts of 1 to 27 tokens (below a chunk, whole chunks, chunks and a tail), from a zero state and from the
    /// state after an earlier prompt: read as they are against read after (8 − length mod 8) mod 8 masked positions.
    /// The tolerance: both are float32 sums of the same terms in another order (the chunk form's decay products against
    /// the recurrent form's step by step), a few hundred operations deep at ~6e-8 each; 1e-5 of the largest logit leaves
    /// room for that, while one pad fed as a token moves them by more than 1e-2 (checked below, so the bound can fail).
    /// </summary>
    [TestCase("custom")]
    [TestCase("onnx")]
    public void APromptPaddedToWholeChunksGivesItsLogitsAndStateToRounding(string kernels)
    {
        using var session = XLstmSession.Load(_tmp.Sub(kernels));
        var memory = DeviceMemory.For(session.Options);
        using var pool = new StatePool(session.Manifest, memory, 1, 2, "prompt row");
        using var runner = new StepRunner(session, memory, pool);
        var rng = new Random(11);
        long[] earlier = [.. Enumerable.Range(0, 13).Select(_ => (long)(3 + rng.Next(95)))];
        pool.Zero(0, 0, 1);
        runner.Prompt(pool, 0, 0, 1, earlier, [.. earlier.Select(_ => 1L)], earlier.Length, 0);
        var afterEarlier = pool.Read(1, 0, 1);
        var zero = afterEarlier.Select(t => new float[t.Length]).ToArray();

        (float[] Logits, float[][] State) Read(float[][] from, long[] ids, long[] mask)
        {
            pool.Write(0, 0, from);
            runner.Prompt(pool, 0, 0, 1, ids, mask, ids.Length, 0);
            var logits = new float[runner.Vocab];
            runner.DownloadLogits(0, logits);
            return (logits, pool.Read(1, 0, 1));
        }

        double worstLogits = 0, worstState = 0;
        foreach (var (start, name) in new[] { (zero, "zero state"), (afterEarlier, "after 13 tokens") })
        {
            foreach (int length in Enumerable.Range(1, 27))
            {
                long[] prompt = [.. Enumerable.Range(0, length).Select(_ => (long)(3 + rng.Next(95)))];
                int pads = (8 - length % 8) % 8;
                var exact = Read(start, prompt, [.. prompt.Select(_ => 1L)]);
                long[] paddedIds = [.. Enumerable.Repeat(1L, pads), .. prompt];
                var padded = Read(start, paddedIds, [.. Enumerable.Range(0, pads + length).Select(c => c < pads ? 0L : 1L)]);
                string at = $"{kernels}, {name}, {length} tokens, {pads} pads";
                double scale = exact.Logits.Max(Math.Abs);
                double dl = exact.Logits.Zip(padded.Logits, (a, b) => Math.Abs(a - b)).Max() / scale;
                Assert.That(dl, Is.LessThanOrEqualTo(1e-5), at + ": logits");
                for (int t = 0; t < exact.State.Length; t++)
                {
                    double norm = Math.Sqrt(exact.State[t].Sum(x => (double)x * x));
                    double diff = Math.Sqrt(exact.State[t].Zip(padded.State[t], (a, b) => (double)(a - b) * (a - b)).Sum());
                    if (norm > 0) worstState = Math.Max(worstState, diff / norm);
                    Assert.That(norm > 0 ? diff / norm : diff, Is.LessThanOrEqualTo(1e-5), $"{at}: state tensor {t}");
                }
                worstLogits = Math.Max(worstLogits, dl);
                if (pads > 0 && length == 5)
                {
                    // the same pads fed as tokens: what a leak through the mask would look like
                    var leaked = Read(start, paddedIds, [.. paddedIds.Select(_ => 1L)]);
                    double leak = exact.Logits.Zip(leaked.Logits, (a, b) => Math.Abs(a - b)).Max() / scale;
                    Assert.That(leak, Is.GreaterThan(1e-2), at + ": unmasked pads change the logits far beyond the bound");
                }
            }
        }
        TestContext.Out.WriteLine($"{kernels}: worst logit difference {worstLogits:e2} of the largest logit, worst state relative L2 {worstState:e2}");
    }
}
