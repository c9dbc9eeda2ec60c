using System.Threading.Channels;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// The serving engine without HTTP: streams under load equal the same requests served alone (greedy and seeded
/// sampling), decode steps run at the smallest batch size that holds the live rows, long prompts are read in pieces
/// while others keep decoding, cached prompts join without a model call, and a pool that cannot fit is refused.
/// </summary>
[TestFixture]
[NonParallelizable]
public class ServingEngineTests
{
    private static TempDir _tmp = null!;
    private static string _plain = "", _fast = "", _long = "", _fastBf16 = "", _mixed = "", _mixedBf16 = "", _paddedMixed = "";

    [OneTimeSetUp]
    public static void Export()
    {
        _tmp = TestPaths.Temp();
        string fixture = Path.Combine(TestPaths.Fixtures, "segmented"); // chunk_size 8, max_inference_chunksize 20
        // standard ops with logits for every position (host argmax), and the fast path: custom ops, last logits, next_token
        _plain = _tmp.Sub("plain");
        OnnxExporter.Export(fixture, _plain, new ExportOptions());
        _fast = _tmp.Sub("fast");
        OnnxExporter.Export(fixture, _fast, new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true });
        // the same with the state's C and n stored as bfloat16 (--state-dtype bf16)
        _fastBf16 = _tmp.Sub("fast-bf16");
        OnnxExporter.Export(fixture, _fastBf16, new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true, StateDtype = StateDtype.Bf16 });
        // with the mixed graph: prompts read inside decode steps (float32 and bfloat16 state)
        _mixed = _tmp.Sub("mixed");
        OnnxExporter.Export(fixture, _mixed, new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true, MixedGraph = true });
        _mixedBf16 = _tmp.Sub("mixed-bf16");
        OnnxExporter.Export(fixture, _mixedBf16, new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true, MixedGraph = true, StateDtype = StateDtype.Bf16 });
        // one segment of 16384: a long prompt alone is one call, under load many pieces
        _long = _tmp.Sub("long");
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "fused_bias"), _long, new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true });
        // chunks of 8 in one segment: prompts padded to whole chunks (PadPrompts), also inside mixed steps
        _paddedMixed = _tmp.Sub("padded-mixed");
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "fused_bias"), _paddedMixed, new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true, MixedGraph = true });
    }

    [OneTimeTearDown]
    public static void Cleanup() => _tmp.Dispose();

    private sealed record Case(int[] Prompt, GenerationOptions Options);

    /// <summary>Prompts of 1 to 70 tokens (below a chunk, a few chunks, across the 20-token segments); greedy, sampled, penalised and biased.</summary>
    private static List<Case> Cases(int count, int seed)
    {
        var rng = new Random(seed);
        var cases = new List<Case>();
        for (int i = 0; i < count; i++)
        {
            int length = i % 4 == 0 ? 1 + rng.Next(7) : 1 + rng.Next(70);
            var prompt = Enumerable.Range(0, length).Select(_ => 3 + rng.Next(95)).ToArray();
            var o = (i % 7) switch
            {
                0 or 1 or 2 => new GenerationOptions { Greedy = true },
                3 => new GenerationOptions { Temperature = 1.2, TopP = 0.9, Seed = (ulong)i },
                4 => new GenerationOptions { Greedy = true, RepetitionPenalty = 1.3 },
                // OpenAI's penalties (output counts move with the row) and log-probabilities
                5 => new GenerationOptions { Greedy = true, PresencePenalty = 1.0, FrequencyPenalty = 0.5, LogProbs = true, TopLogProbs = 3 },
                // a logit bias (a dense row, rewritten when the sequence lands in another row)
                _ => new GenerationOptions { Temperature = 0.9, Seed = (ulong)i, LogitBias = new Dictionary<int, float> { [3 + rng.Next(95)] = 5, [3 + rng.Next(95)] = -100 } },
            };
            cases.Add(new Case(prompt, o with { MaxNewTokens = 5 + rng.Next(30), IgnoreEos = true }));
        }
        return cases;
    }

    /// <summary>The ids of a stream; each event's log-probabilities checked against what was asked for.</summary>
    private static async Task<int[]> Collect(ChannelReader<CompletionEvent> events, GenerationOptions? options = null)
    {
        var ids = new List<int>();
        await foreach (var e in events.ReadAllAsync())
        {
            ids.Add(e.Token);
            if (options is null) continue;
            Assert.That(e.LogProb.HasValue, Is.EqualTo(options.LogProbs), "a log-probability exactly when asked for");
            Assert.That(e.TopLogProbs?.Length ?? 0, Is.EqualTo(options.TopLogProbs));
            if (options is { Greedy: true, TopLogProbs: > 0, PresencePenalty: 0, FrequencyPenalty: 0 }) Assert.That(e.TopLogProbs![0].Token, Is.EqualTo(e.Token));
            if (e.TopLogProbs is { } top) Assert.That(e.LogProb, Is.LessThanOrEqualTo(top[0].LogProb));
        }
        return [.. ids];
    }

    /// <summary>The request's events end within 30 s (not never) with the error <paramref name="message"/>.</summary>
    private static void EndsWithin30SecondsWith(ChannelReader<CompletionEvent> events, string message)
    {
        var read = Collect(events);
        try
        {
            read.Wait(TimeSpan.FromSeconds(30));
        }
        catch (AggregateException)
        {
            // checked below
        }
        Assert.That(read.IsCompleted, "the request ended within 30 s instead of waiting forever");
        var e = Assert.Throws<AggregateException>(() => read.Wait())!;
        Assert.That(e.InnerException!.Message, Is.EqualTo(message));
    }

    private static int[][] ServeAll(ServingEngine engine, IReadOnlyList<Case> cases) =>
        Task.WhenAll(cases.Select(c => Collect(engine.Submit(c.Prompt, c.Options), c.Options))).GetAwaiter().GetResult();

    private static int[] ServeAlone(ServingEngine engine, Case c) => Collect(engine.Submit(c.Prompt, c.Options)).GetAwaiter().GetResult();

    /// <summary>
    /// A model call that fails while a group of prompts is read reaches every request of the group (they are neither
    /// waiting nor live at that moment), and the engine refuses new requests naming the error. Before the fix they
    /// waited forever (found on the H200, where a shape error in such a call hung the test).
    /// </summary>
    [Test]
    public void AFailedGroupReadEndsEveryRequestOfTheGroupWithTheError()
    {
        using var session = XLstmSession.Load(_fast);
        using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 4 });
        engine.BeforeGroupCall = _ => throw new InvalidOperationException("planted failure of a group call");
        var readers = Enumerable.Range(0, 3).Select(i => engine.Submit([5 + i, 6, 7], new GenerationOptions { Greedy = true, MaxNewTokens = 4 })).ToArray();
        foreach (var r in readers) EndsWithin30SecondsWith(r, "planted failure of a group call");
        var refused = Assert.Throws<XLstmOnnxException>(() => engine.Submit([5], new GenerationOptions { Greedy = true, MaxNewTokens = 1 }))!;
        Assert.That(refused.Message, Does.Contain("stopped after an error").And.Contain("planted failure"));
    }

    /// <summary>
    /// A failure as a request joins the live rows (a failed device copy) reaches that request, though it is then neither
    /// waiting nor live: after a prompt read in a piece and then with its group (30 tokens, segments of 20), and for a
    /// prompt the prefix cache holds whole, which joins straight from the queue (before, that one waited forever).
    /// </summary>
    [TestCase("pieces")]
    [TestCase("cached")]
    public void AFailureAsARequestJoinsEndsItWithTheError(string path)
    {
        using var session = XLstmSession.Load(_fast);
        using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 4 });
        var options = new GenerationOptions { Greedy = true, MaxNewTokens = 3 };
        int[] prompt = [.. Enumerable.Range(0, path == "pieces" ? 30 : 12).Select(i => 3 + i % 90)];
        if (path == "cached") Assert.That(ServeAlone(engine, new Case(prompt, options)), Has.Length.EqualTo(3), "read once: now cached whole");
        engine.BeforeJoin = _ => throw new InvalidOperationException("planted failure of a join");
        EndsWithin30SecondsWith(engine.Submit(prompt, options), "planted failure of a join");
    }

    /// <summary>
    /// Under load (4 slots, 30 requests) every stream equals the same request served alone: standard ops, the fast path
    /// (float32 and bfloat16 state), and with the mixed graph, where prompts are read inside the decode steps (the decode
    /// rows' projections then run with the prompt's rows beside them).
    /// </summary>
    [TestCase("plain")]
    [TestCase("fast")]
    [TestCase("fast-bf16")]
    [TestCase("mixed")]
    [TestCase("mixed-fixed")]
    [TestCase("mixed-bf16-fixed")]
    [TestCase("padded")]
    [TestCase("padded-mixed")]
    [TestCase("padded-mixed-fixed")]
    public void EveryStreamUnderLoadEqualsTheRequestServedAlone(string model)
    {
        bool fastPath = model != "plain", mixed = model.Contains("mixed", StringComparison.Ordinal);
        bool fixedShapes = model.EndsWith("-fixed", StringComparison.Ordinal); // the pieces of captured mixed calls, pads and all
        bool padded = model.StartsWith("padded", StringComparison.Ordinal);  // readings padded to whole chunks
        using var session = XLstmSession.Load(model switch
        {
            "plain" => _plain,
            "fast" => _fast,
            "fast-bf16" => _fastBf16,
            "mixed" or "mixed-fixed" => _mixed,
            "padded" => _long,
            "padded-mixed" or "padded-mixed-fixed" => _paddedMixed,
            _ => _mixedBf16,
        });
        var cases = Cases(30, fastPath ? 2 : 1);
        // 4 slots for 30 requests: queueing, joins, rows moving as others end, buckets 1/2/4, prompts read in pieces of 8
        var options = new ServingOptions
        {
            MaxBatch = 4, PrefillRows = 2, PrefillChunkTokens = 8, QueueCapacity = 64, FixedPieceShapes = fixedShapes, MixedSteps = mixed ? true : null,
            PadPrompts = padded ? true : null, MixedPromptRows = 2,
        };
        int[][] underLoad;
        using (var engine = new ServingEngine(session, options))
        {
            underLoad = ServeAll(engine, cases);
            if (mixed)
            {
                Assert.That(engine.Metrics.MixedSteps, Is.GreaterThan(10), "prompts were read inside decode steps");
                // whole chunks: two waiting prompts ride one step (MixedPromptRows 2), each in its own row
                if (padded) Assert.That(engine.MixedRowsUsed, Does.Contain(2), "some steps read two prompts");
                else Assert.That(engine.MixedRowsUsed, Is.Empty, "pieces with recurrent tails ride one at a time");
                // whole-chunk readings: pieces of one chunk (PrefillChunkTokens), the lead pads at the start of a first piece
                if (padded) Assert.That(engine.MixedShapesUsed, Is.EquivalentTo(new[] { (8, 0) }));
                // chunk 8, segments of 20: whole chunks, tails padded to 7, and a chunk with a padded tail after it
                else if (fixedShapes) Assert.That(engine.MixedShapesUsed, Does.Contain((8, 0)).And.Contain((7, 0)).And.Contain((15, 8)));
                else Assert.That(engine.MixedShapesUsed.Select(s => s.Length).Distinct().Count(), Is.GreaterThan(8), "unpadded: the prompts' own lengths");
            }
            else Assert.That(engine.Metrics.MixedSteps, Is.Zero);
            Assert.That(engine.PadPrompts, Is.EqualTo(padded), "on the CPU prompts are padded only when asked for");
        }
        using (var alone = new ServingEngine(session, options with { PrefixCacheBytes = 0 }))
        {
            for (int i = 0; i < cases.Count; i++)
            {
                Assert.That(underLoad[i], Has.Length.EqualTo(cases[i].Options.MaxNewTokens), $"request {i}: every token arrived");
                Assert.That(underLoad[i], Is.EqualTo(ServeAlone(alone, cases[i])), $"request {i} (prompt of {cases[i].Prompt.Length}, {cases[i].Options})");
            }
        }
        // and alone through a generator (another decode loop over the same pieces): the greedy rows. A Generator reads
        // prompts in transformers' schedule, not padded: that is equal to rounding only (PaddedPromptTests)
        if (padded) return;
        using var g = new Generator(session, 1);
        foreach (var (c, i) in cases.Select((c, i) => (c, i)).Where(x => x.c.Options.Greedy))
        {
            g.Reset();
            Assert.That(g.Generate([c.Prompt], c.Options).Tokens[0], Is.EqualTo(underLoad[i]), $"request {i} through a Generator");
        }
    }

    /// <summary>
    /// A mixed graph ONNX Runtime cannot open: asked for (MixedSteps true), the engine refuses to start naming the file;
    /// left to choose, it reads prompts between steps and says why (MixedStepsError; on the CPU auto does not use the
    /// mixed graph at all, so that path runs in CudaTests).
    /// </summary>
    [Test]
    public void AMixedGraphThatCannotBeOpenedIsNamedWhenAskedFor()
    {
        using var tmp = TestPaths.Temp();
        string dir = Directory.CreateDirectory(tmp.Sub("broken")).FullName;
        foreach (var f in Directory.GetFiles(_mixed)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        File.WriteAllText(Path.Combine(dir, OnnxExporter.MixedModelFile), "not an ONNX model");
        using var session = XLstmSession.Load(dir);
        var e = Assert.Throws<XLstmOnnxException>(() => new ServingEngine(session, new ServingOptions { MaxBatch = 2, MixedSteps = true }))!;
        Assert.That(e.Message, Does.Contain(Path.Combine(dir, OnnxExporter.MixedModelFile)).And.Contain("could not load"));
        using var auto = new ServingEngine(session, new ServingOptions { MaxBatch = 2 });
        Assert.That((auto.MixedSteps, auto.MixedStepsError), Is.EqualTo((false, (string?)null)), "on the CPU auto leaves the mixed graph alone");
        var o = new GenerationOptions { Greedy = true, MaxNewTokens = 3 };
        Assert.That(Collect(auto.Submit([5, 6, 7], o)).GetAwaiter().GetResult(), Has.Length.EqualTo(3));
    }

    [Test]
    public void DecodeRunsAtTheSmallestBucketThatHoldsTheLiveRows()
    {
        using var session = XLstmSession.Load(_fast);
        using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 8 });
        var o = new GenerationOptions { Greedy = true, MaxNewTokens = 40, IgnoreEos = true };
        // the first join waits until all three are queued: on a busy machine the test thread could otherwise submit the
        // last ones several steps late, and the rows would step at batch 4 fewer times than asserted (seen once in CI)
        using var queued = new ManualResetEventSlim();
        engine.BeforeJoin = _ => queued.Wait(TimeSpan.FromSeconds(30));
        var streams = new[] { new Case([5, 6, 7], o), new Case([8, 9], o), new Case([10], o) }.Select(c => Collect(engine.Submit(c.Prompt, c.Options), c.Options)).ToArray();
        queued.Set();
        Task.WhenAll(streams).GetAwaiter().GetResult();
        var steps = engine.StepsByBatch;
        Assert.That(engine.Options.Buckets(), Is.EqualTo(new[] { 1, 2, 4, 8 }));
        Assert.That(steps.Keys, Does.Not.Contain(8), "three live rows never step at the pool's full size");
        Assert.That(steps.GetValueOrDefault(4), Is.GreaterThanOrEqualTo(30), "they step together at batch 4");
    }

    [Test]
    public void ALongPromptIsReadInPiecesWhileOthersKeepDecoding()
    {
        using var session = XLstmSession.Load(_long);
        // prefill may take a tenth of a step's time: a piece (8 tokens at batch 1) costs about a step (1 token at batch 2)
        // or more, so several steps run between two pieces, however fast or loaded the machine is
        using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 4, PrefillChunkTokens = 8, PrefillShare = 0.1 });
        var streaming = new GenerationOptions { Greedy = true, MaxNewTokens = 400, IgnoreEos = true };
        var counts = new int[2];
        var firstTokens = new TaskCompletionSource[] { new(), new() };
        var streams = Enumerable.Range(0, 2).Select(k => Task.Run(async () =>
        {
            await foreach (var e in engine.Submit([10 + k, 11, 12], streaming).ReadAllAsync())
            {
                Interlocked.Increment(ref counts[k]);
                firstTokens[k].TrySetResult();
            }
        })).ToArray();
        Task.WaitAll(firstTokens.Select(t => t.Task).ToArray());
        var longCase = new Case([.. Enumerable.Range(0, 160).Select(i => 3 + i * 7 % 95)], new GenerationOptions { Greedy = true, MaxNewTokens = 4, IgnoreEos = true });
        int before = counts[0];
        var reader = engine.Submit(longCase.Prompt, longCase.Options);
        var first = reader.ReadAsync().AsTask().GetAwaiter().GetResult();
        int during = counts[0] - before;
        var rest = Collect(reader).GetAwaiter().GetResult();
        // 160 tokens in 20 pieces of 8, each paid for by several steps' credit (capped at four steps' worth of 0.1):
        // the others stepped through the admission; read at once, they would have waited one call
        Assert.That(during, Is.GreaterThanOrEqualTo(19), $"a live stream got {during} tokens while the 160-token prompt was read");
        Task.WaitAll(streams);
        Assert.That(counts, Is.All.EqualTo(400));
        using var alone = new ServingEngine(session, new ServingOptions { MaxBatch = 4, PrefixCacheBytes = 0 });
        Assert.That((int[])[first.Token, .. rest], Is.EqualTo(ServeAlone(alone, longCase)), "read in pieces between steps equals read at once");
    }

    [Test]
    public void ACachedPromptJoinsFromItsStateAndGivesTheSameTokens()
    {
        using var session = XLstmSession.Load(_fast);
        using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 2 });
        var o = new GenerationOptions { Greedy = true, MaxNewTokens = 20, IgnoreEos = true };
        int[] prompt = [.. Enumerable.Range(3, 30)];
        var cold = ServeAlone(engine, new Case(prompt, o));
        Assert.That((engine.Metrics.CacheHits, engine.Metrics.CacheEntries), Is.EqualTo((0L, 1)));
        var warm = ServeAlone(engine, new Case(prompt, o));
        Assert.That(engine.Metrics.CacheHits, Is.EqualTo(1), "the whole prompt was cached");
        Assert.That(warm, Is.EqualTo(cold));
        // a longer prompt starts from the cached prefix: the same tokens as reading it whole
        int[] longer = [.. prompt, 40, 41, 42];
        var extended = ServeAlone(engine, new Case(longer, o));
        Assert.That(engine.Metrics.CacheHits, Is.EqualTo(2));
        using var fresh = new ServingEngine(session, new ServingOptions { MaxBatch = 2, PrefixCacheBytes = 0 });
        var whole = ServeAlone(fresh, new Case(longer, o));
        Assert.That(extended.Take(5), Is.EqualTo(whole.Take(5)), "the first tokens after a cached prefix (its state is read in another split: not bitwise, rounding only)");
    }

    /// <summary>
    /// The prefix cache holds what its byte bound allows (2.5 states' bytes: two entries, never more bytes than the bound)
    /// and evicts the least recently used entry: a hit makes an entry recent, so the entry not used since is the one
    /// that goes.
    /// </summary>
    [Test]
    public void ThePrefixCacheEvictsTheLeastRecentlyUsedAtItsByteBound()
    {
        using var session = XLstmSession.Load(_fast);
        long row = StatePool.RowBytesFor(session.Manifest), bound = row * 5 / 2;
        using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 2, PrefixCacheBytes = bound });
        Assert.That(engine.Metrics.CacheCapacity, Is.EqualTo(2), "⌊2.5 states⌋");
        var o = new GenerationOptions { Greedy = true, MaxNewTokens = 2, IgnoreEos = true };
        int[] P(int start) => [.. Enumerable.Range(start, 12)]; // 12 ≥ PrefixCacheMinTokens: cached
        (long Hits, long Misses) Serve(int[] prompt)
        {
            ServeAlone(engine, new Case(prompt, o));
            return (engine.Metrics.CacheHits, engine.Metrics.CacheMisses);
        }
        int[] a = P(3), b = P(20), c = P(40);
        Assert.That(Serve(a), Is.EqualTo((0L, 1L)));
        Assert.That(Serve(b), Is.EqualTo((0L, 2L)));
        Assert.That(Serve(a), Is.EqualTo((1L, 2L)), "a hit: a is now the most recent");
        Assert.That(Serve(c), Is.EqualTo((1L, 3L)), "c takes b's place, the least recently used");
        Assert.That((engine.Metrics.CacheEntries, engine.Metrics.CacheBytes), Is.EqualTo((2, 2 * row)));
        Assert.That(engine.Metrics.CacheBytes, Is.LessThanOrEqualTo(bound));
        Assert.That(Serve(a), Is.EqualTo((2L, 3L)), "a stayed");
        Assert.That(Serve(c), Is.EqualTo((3L, 3L)), "c is cached");
        Assert.That(Serve(b), Is.EqualTo((3L, 4L)), "b was evicted");
    }

    [Test]
    public void APoolThatDoesNotFitIsRefusedWithItsSizes()
    {
        // xLSTM-7b: 32 layers, 8 heads, q/k 256, v 512 (fp32 state: 128 MiB a sequence)
        var m = new ModelManifest { NumLayers = 32, NumHeads = 8, QkHeadDim = 256, VHeadDim = 512, VocabSize = 50304 };
        Assert.That(StatePool.RowBytesFor(m), Is.EqualTo(32L * (8 * 256 * 512 + 8 * 256 + 8) * 4));
        const long GiB = 1L << 30;
        var o = new ServingOptions { MaxBatch = 64, PrefillRows = 4 };
        // 126 GiB free of 140 (an H200 after 14 GB of weights): fits, and the default cache is two states a slot
        Assert.That(ServingEngine.Plan(m, o, (126 * GiB, 140 * GiB)), Is.EqualTo(128));
        var e = Assert.Throws<XLstmOnnxException>(() => ServingEngine.Plan(m, o with { MaxBatch = 256 }, (60 * GiB, 80 * GiB)))!;
        Assert.That(e.Message, Does.Contain("ServingOptions.MaxBatch 256").And.Contain("2 × 256 × 128 MiB").And.Contain("of float32 state")
            .And.Contain("free after the weights").And.Contain("Lower ServingOptions.MaxBatch or ServingOptions.PrefixCacheBytes"));
        // host memory is not budgeted; the default cache is capped at 1 GiB there
        Assert.That(ServingEngine.Plan(m, o, null), Is.EqualTo(7));
        // a bf16 state (C and n two bytes a value, m four): 64 MiB a sequence, so the 256 slots refused above fit in the
        // same memory, and the refusal of a pool twice that size names the bf16 sizes
        var b = m with { StateDtype = StateDtype.Bf16 };
        Assert.That(StatePool.RowBytesFor(b), Is.EqualTo(32L * ((8 * 256 * 512 + 8 * 256) * 2 + 8 * 4)));
        Assert.That(ServingEngine.Plan(b, o with { MaxBatch = 256 }, (60 * GiB, 80 * GiB)), Is.GreaterThan(0));
        e = Assert.Throws<XLstmOnnxException>(() => ServingEngine.Plan(b, o with { MaxBatch = 512 }, (60 * GiB, 80 * GiB)))!;
        Assert.That(e.Message, Does.Contain("2 × 512 × 64 MiB").And.Contain("of bf16 state"));
    }
}
