using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>The decode loop allocates nothing per token (managed heap), so long generations put no load on the GC.</summary>
[TestFixture]
public class AllocationTests
{
    private TempDir _tmp = null!;
    private XLstmSession _session = null!;

    [OneTimeSetUp]
    public void Export()
    {
        _tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "single_basic"), _tmp.Sub("m"), new ExportOptions { LastLogitsOnly = true });
        _session = XLstmSession.Load(_tmp.Sub("m"));
    }

    [OneTimeTearDown]
    public void Cleanup()
    {
        _session.Dispose();
        _tmp.Dispose();
    }

    [Test]
    public void DecodeStepsDoNotAllocate()
    {
        using var g = new Generator(_session, 2);
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
    /// <summary>The same loop driven by the caller (<see cref="Generator.Start"/> and <see cref="GenerationRun.Step"/>): nothing per step either.</summary>
    [Test]
    public void RunStepsDoNotAllocate()
    {
        using var g = new Generator(_session, 2);
        long Allocated(int tokens)
        {
            var o = new GenerationOptions { MaxNewTokens = tokens, IgnoreEos = true, Temperature = 0.9, TopK = 20, TopP = 0.9, RepetitionPenalty = 1.2, Seed = 1 };
            long Run()
            {
                g.Reset();
                long before = GC.GetAllocatedBytesForCurrentThread();
                using var run = g.Start([[1, 2, 3], [4, 5]], o, decodeText: false);
                int seen = 0;
                while (run.Step(out var step)) seen += step.Length;
                Assert.That(seen, Is.EqualTo(2 * tokens));
                return GC.GetAllocatedBytesForCurrentThread() - before;
            }
            Run(); // warm-up: JIT, ORT arenas
            return Run();
        }
        long small = Allocated(20), large = Allocated(220);
        double perToken = (large - small) / 200.0;
        // per-run setup (decoders, output lists sized by max tokens: 4 bytes per token per row) is allowed
        TestContext.Out.WriteLine($"bytes per extra token: {perToken:F1}");
        Assert.That(perToken, Is.LessThan(2 * 2 * 4 + 1), $"managed bytes allocated per extra token (2 rows): {perToken:F1}");
    }

    /// <summary>
    /// The async stream runs each step on the thread pool through one reusable work item, so it allocates nothing per
    /// token either. Measured over all threads (the steps run on pool threads); the consumer leaves its synchronization
    /// context (ConfigureAwait(false)), since posting back to one allocates on the consumer's side, not the stream's.
    /// </summary>
    [Test]
    public async Task StreamedStepsDoNotAllocate()
    {
        using var g = new Generator(_session, 1);
        async Task<long> Allocated(int tokens)
        {
            var o = new GenerationOptions { MaxNewTokens = tokens, IgnoreEos = true, Temperature = 0.9, TopK = 20, RepetitionPenalty = 1.2, Seed = 1 };
            async Task<long> Run()
            {
                g.Reset();
                long before = GC.GetTotalAllocatedBytes(precise: true);
                int seen = 0;
                await foreach (var t in g.GenerateAsync([1, 2, 3], o).ConfigureAwait(false)) seen++;
                long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
                Assert.That(seen, Is.EqualTo(tokens));
                return allocated;
            }
            await Run().ConfigureAwait(false); // warm-up: JIT, ORT arenas, pool threads
            return await Run().ConfigureAwait(false);
        }
        // the least of three measurements: the test host's other threads (tiered JIT, timers) sometimes allocate
        // hundreds of bytes a token during one of them, while an allocation per step shows in every one
        double perToken = double.MaxValue;
        for (int attempt = 0; attempt < 3 && perToken >= 64; attempt++)
        {
            long small = await Allocated(20).ConfigureAwait(false), large = await Allocated(220).ConfigureAwait(false);
            perToken = Math.Min(perToken, (large - small) / 200.0);
        }
        TestContext.Out.WriteLine($"bytes per extra token, all threads: {perToken:F1}");
        // 4 bytes per token are the output list sized by max tokens, and the test host's other threads add 4 to 10 more;
        // a Task per step (Task.Run) would add 152
        Assert.That(perToken, Is.LessThan(64), $"managed bytes allocated per extra token, all threads: {perToken:F1}");
    }
}
