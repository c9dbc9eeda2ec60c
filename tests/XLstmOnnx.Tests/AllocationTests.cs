using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>The decode loop allocates nothing per token (managed heap), so long generations put no load on the GC.</summary>
[TestFixture]
public class AllocationTests
{
    [Test]
    public void DecodeStepsDoNotAllocate()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "single_basic"), tmp.Sub("m"), new ExportOptions { LastLogitsOnly = true });
        using var session = XLstmSession.Load(tmp.Sub("m"));
        using var g = new Generator(session, 2);
        long Allocated(int tokens)
        {
            var o = new GenerationOptions { MaxNewTokens = tokens, IgnoreEos = true, Temperature = 0.9, TopK = 20, TopP = 0.9, RepetitionPenalty = 1.2, Seed = 1 };
            g.Reset();
            g.Generate([[1, 2, 3], [4, 5]], o); // warm-up: JIT, ORT arenas
            g.Reset();
            long before = GC.GetAllocatedBytesForCurrentThread();
            g.Generate([[1, 2, 3], [4, 5]], o);
            return GC.GetAllocatedBytesForCurrentThread() - before;
        }
        long small = Allocated(20), large = Allocated(220);
        double perToken = (large - small) / 200.0;
        // per-call setup (samplers, result arrays sized by max tokens: 4 bytes per token per row) is allowed;
        // anything per decode step beyond that would show here
        TestContext.Out.WriteLine($"bytes per extra token: {perToken:F1}");
        Assert.That(perToken, Is.LessThan(2 * 2 * 4 + 1), $"managed bytes allocated per extra token (2 rows): {perToken:F1}");
    }
}
