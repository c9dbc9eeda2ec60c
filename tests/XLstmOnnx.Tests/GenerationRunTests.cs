using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>
/// The step-by-step API (<see cref="Generator.Start"/>, <see cref="GenerationRun"/>) and the streamed one
/// (<see cref="Generator.GenerateAsync(IReadOnlyList{int}, GenerationOptions, CancellationToken)"/>): the same tokens as
/// Generate, cancellation and early stops that leave the state consistent, and appends mid-generation that equal
/// reading the whole sequence at once.
/// </summary>
[TestFixture]
public class GenerationRunTests
{
    private TempDir _tmp = null!;
    private XLstmSession _session = null!;

    /// <summary>Greedy with a repetition penalty (the sampler with its counts), and seeded sampling with every filter.</summary>
    private static readonly GenerationOptions Greedy = new() { Greedy = true, MaxNewTokens = 16, IgnoreEos = true, RepetitionPenalty = 1.3 };
    private static readonly GenerationOptions Sampled = new() { Temperature = 1.2, TopK = 30, TopP = 0.95, MinP = 0.01, RepetitionPenalty = 1.1, MaxNewTokens = 16, IgnoreEos = true, Seed = 77 };

    private static readonly int[] Prompt = [.. Enumerable.Range(7, 30)];

    [OneTimeSetUp]
    public void Export()
    {
        _tmp = TestPaths.Temp();
        // two layers and a chunk of 16 (tied_dims): the 30-token prompt runs the chunkwise and the recurrent forms
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "tied_dims"), _tmp.Sub("m"), new ExportOptions());
        _session = XLstmSession.Load(_tmp.Sub("m"));
    }

    [OneTimeTearDown]
    public void Cleanup()
    {
        _session.Dispose();
        _tmp.Dispose();
    }

    private static GenerationOptions Options(string kind) => kind == "greedy" ? Greedy : Sampled;

    private int[] Generate(int[] prompt, GenerationOptions options)
    {
        using var g = new Generator(_session, 1);
        return g.Generate([prompt], options).Tokens[0];
    }

    private static async Task<List<GeneratedToken>> Collect(IAsyncEnumerable<GeneratedToken> stream)
    {
        var list = new List<GeneratedToken>();
        await foreach (var t in stream) list.Add(t);
        return list;
    }

    [TestCase("greedy")]
    [TestCase("sampled")]
    public async Task StreamedTokensEqualGenerate(string kind)
    {
        var o = Options(kind);
        int[] expected = Generate(Prompt, o);
        using var g = new Generator(_session, 1);
        var streamed = await Collect(g.GenerateAsync(Prompt, o));
        Assert.That(streamed.Select(t => t.Token), Is.EqualTo(expected));
        Assert.That(streamed.Select(t => t.Row), Has.All.EqualTo(0));
        Assert.That(streamed[..^1].Select(t => t.Finish), Has.All.EqualTo(StopReason.None), "tokens before the last");
        Assert.That(streamed[^1].Finish, Is.EqualTo(StopReason.MaxNewTokens));

        // the stepping loop, by hand
        using var h = new Generator(_session, 1);
        using var run = h.Start([Prompt], o);
        var stepped = new List<int>();
        while (run.Step(out var tokens))
        {
            Assert.That(tokens.Length, Is.EqualTo(1), "one token per step for a batch of one");
            stepped.Add(tokens[0].Token);
        }
        Assert.That(stepped, Is.EqualTo(expected));
        Assert.That(run.IsFinished);
        Assert.That(run.Step(out var none), Is.False, "a finished run stays finished");
        Assert.That(none.IsEmpty);
        var result = run.Result();
        Assert.That(result.Tokens[0], Is.EqualTo(expected));
        Assert.That(result.Reasons[0], Is.EqualTo(StopReason.MaxNewTokens));
        Assert.That(result.DecodeSteps, Is.EqualTo(expected.Length - 1), "every token but the last was fed");
    }

    [TestCase("greedy")]
    [TestCase("sampled")]
    public async Task BatchedStreamEqualsGenerate(string kind)
    {
        // rows stop at different steps: the stop id ends row 1 early, row 0 runs to MaxNewTokens
        int[][] prompts = [Prompt, [3, 1, 4, 1, 5]];
        var free = Generate(prompts[1], Options(kind));
        var o = Options(kind) with { StopTokenIds = [free[5]] };
        using var g = new Generator(_session, 2);
        var expected = g.Generate(prompts, o);
        Assert.That(expected.Tokens[1], Has.Length.LessThan(expected.Tokens[0].Length), "row 1 stops first");
        using var h = new Generator(_session, 2);
        var streamed = await Collect(h.GenerateAsync(prompts, o));
        for (int r = 0; r < 2; r++)
        {
            Assert.That(streamed.Where(t => t.Row == r).Select(t => t.Token), Is.EqualTo(expected.Tokens[r]), $"row {r}");
            Assert.That(streamed.Last(t => t.Row == r).Finish, Is.EqualTo(expected.Reasons[r]), $"row {r}");
        }
        // each step delivers the rows still generating, in row order
        var order = Enumerable.Range(0, expected.Tokens[0].Length).SelectMany(step => Enumerable.Range(0, 2).Where(r => step < expected.Tokens[r].Length));
        Assert.That(streamed.Select(t => t.Row), Is.EqualTo(order));
    }

    [Test]
    public async Task CancellationStopsAtTheNextToken()
    {
        var o = Greedy with { RepetitionPenalty = 1.0 };
        int[] whole = Generate(Prompt, o);
        using var g = new Generator(_session, 1);
        using var cancel = new CancellationTokenSource();
        var seen = new List<int>();
        await Assert.ThatAsync(async () =>
        {
            await foreach (var t in g.GenerateAsync(Prompt, o, cancel.Token))
            {
                seen.Add(t.Token);
                if (seen.Count == 5) await cancel.CancelAsync();
            }
        }, Throws.InstanceOf<OperationCanceledException>());
        Assert.That(seen, Is.EqualTo(whole[..5]), "the tokens before the cancellation, and no more");
        // the state holds exactly the delivered tokens: going on gives the rest of the uninterrupted run
        var rest = g.Generate([[]], o with { MaxNewTokens = whole.Length - 5 }).Tokens[0];
        Assert.That(rest, Is.EqualTo(whole[5..]));

        // cancelled before it starts: nothing is read
        using var h = new Generator(_session, 1);
        await Assert.ThatAsync(async () => await Collect(h.GenerateAsync(Prompt, o, cancel.Token)), Throws.InstanceOf<OperationCanceledException>());
        Assert.That(() => h.Generate([[]], o), Throws.TypeOf<XLstmOnnxException>().With.Message.Contains("the state is empty"), "the prompt was not read");
    }

    [TestCase("greedy")]
    [TestCase("sampled")]
    public async Task EarlyStopLeavesAConsistentState(string kind)
    {
        // no penalty: a new Generate counts only the pending token and its prompt, so "read at once" below would count more
        var o = Options(kind) with { RepetitionPenalty = 1.0 };
        using var g = new Generator(_session, 1);
        var first = new List<int>();
        await foreach (var t in g.GenerateAsync(Prompt, o))
        {
            first.Add(t.Token);
            if (first.Count == 6) break; // leaving the loop disposes the stream
        }
        Assert.That(first, Is.EqualTo(Generate(Prompt, o)[..6]));
        var snapshot = g.Snapshot();
        Assert.That(snapshot.Pending[0], Is.EqualTo(new[] { first[^1] }), "the last delivered token is pending");
        var rest = g.Generate([[]], o with { MaxNewTokens = 8 }).Tokens[0];
        g.Restore(snapshot);
        Assert.That(g.Generate([[]], o with { MaxNewTokens = 8 }).Tokens[0], Is.EqualTo(rest), "restored, it continues exactly");
        // and equals reading what was delivered at once: the state after an early stop is the state of those tokens
        using var whole = new Generator(_session, 1);
        var once = whole.Generate([[.. Prompt, .. first]], o with { MaxNewTokens = 8 }).Tokens[0];
        Assert.That(once, Is.EqualTo(rest));

        // the stepping API: stop after three steps without disposing the run; Snapshot keeps the same state
        using var h = new Generator(_session, 1);
        var run = h.Start([Prompt], o);
        for (int i = 0; i < 3; i++) Assert.That(run.Step(out _));
        var three = h.Snapshot();
        var after = h.Generate([[]], o with { MaxNewTokens = 8 }).Tokens[0];
        Assert.That(() => run.Step(out _), Throws.InvalidOperationException.With.Message.Contains("has ended"), "Generate ended the run");
        h.Restore(three);
        Assert.That(h.Generate([[]], o with { MaxNewTokens = 8 }).Tokens[0], Is.EqualTo(after));
    }

    [Test]
    public void AppendMidGenerationEqualsReadingTheWholeSequence()
    {
        // greedy with a penalty: the appended tokens must be counted as the prompt is, or the choices differ
        var o = Greedy with { MaxNewTokens = 14 };
        int[] tool = [40, 41, 42, 40, 41];
        using var g = new Generator(_session, 1);
        using var run = g.Start([Prompt], o);
        var before = new List<int>();
        for (int i = 0; i < 4; i++)
        {
            Assert.That(run.Step(out var t));
            before.Add(t[0].Token);
        }
        run.Append(tool);
        var after = new List<int>();
        while (run.Step(out var t)) after.Add(t[0].Token);
        Assert.That(after, Has.Count.EqualTo(10), "what was left of MaxNewTokens");
        Assert.That(run.Result().Tokens[0], Is.EqualTo(before.Concat(after)), "the run's tokens are the generated ones only");

        using var whole = new Generator(_session, 1);
        var once = whole.Generate([[.. Prompt, .. before, .. tool]], o with { MaxNewTokens = 10 }).Tokens[0];
        Assert.That(after, Is.EqualTo(once), "appending mid-generation equals reading prompt, chosen and appended tokens at once");
        Assert.That(whole.Snapshot().Tensors, Is.EqualTo(g.Snapshot().Tensors).Within(1e-4),
            "the same state (1e-4: the same tokens read on other chunk grids; fp32 rounding of state values up to ~13)");

        // the control: without the penalty the continuation is another one, so the counts above were tested
        using var plain = new Generator(_session, 1);
        Assert.That(plain.Generate([[.. Prompt, .. before, .. tool]], o with { MaxNewTokens = 10, RepetitionPenalty = 1.0 }).Tokens[0], Is.Not.EqualTo(once));
    }

    [Test]
    public void AnAppendKeepsTheGeneratedTokensCountedForTheFrequencyPenalty()
    {
        // OpenAI's frequency penalty counts generated tokens only, the repetition penalty every token read or generated;
        // an append in the middle must keep both as they are on the device (an earlier merge reset the generated ones)
        var o = new GenerationOptions { Greedy = true, MaxNewTokens = 20, IgnoreEos = true, FrequencyPenalty = 0.5, RepetitionPenalty = 1.1 };
        using var g = new Generator(_session, 1);
        using var run = g.Start([Prompt], o);
        var generated = new List<int>();
        for (int i = 0; i < 6; i++)
        {
            Assert.That(run.Step(out var t));
            generated.Add(t[0].Token);
        }
        int[] tool = [40, 41, 42, 40];
        run.Append(tool);
        float[] Histogram(IEnumerable<int> tokens)
        {
            var h = new float[_session.Manifest.VocabSize];
            foreach (int t in tokens) h[t]++;
            return h;
        }
        var (all, output) = g.Counts(0);
        Assert.That(output, Is.EqualTo(Histogram(generated)), "generated-only counts after the append");
        Assert.That(all, Is.EqualTo(Histogram([.. Prompt, .. generated, .. tool])), "all counts after the append");
        // and the device keeps counting the next choices
        Assert.That(run.Step(out var next));
        generated.Add(next[0].Token);
        Assert.That(g.Counts(0).Generated, Is.EqualTo(Histogram(generated)), "generated-only counts one step later");
    }

    [Test]
    public void AppendInABatchFeedsEachRowItsTokens()
    {
        int[][] prompts = [Prompt, [9, 8, 7, 6]];
        int[][] appended = [[50, 51, 52], []]; // row 1 reads only its chosen token
        var o = Greedy with { MaxNewTokens = 10, RepetitionPenalty = 1.0 };
        using var g = new Generator(_session, 2);
        using var run = g.Start(prompts, o);
        Assert.That(() => run.Append(appended), Throws.TypeOf<XLstmOnnxException>()
            .With.Message.EqualTo("GenerationRun.Append(tokens): row 1 is still generating and has no token to read (before the first step); give every generating row at least one token, or none to all.")
            .And.Property(nameof(XLstmOnnxException.Parameter)).EqualTo("GenerationRun.Append(tokens)"));
        Assert.That(() => run.Append([[1], [9999]]), Throws.TypeOf<XLstmOnnxException>()
            .With.Message.EqualTo($"GenerationRun.Append(tokens): row 1 has token id 9999, outside the model's vocabulary [0, {_session.Manifest.VocabSize}).")
            .And.Property(nameof(XLstmOnnxException.Parameter)).EqualTo("GenerationRun.Append(tokens)"));
        for (int i = 0; i < 3; i++) run.Step(out _);
        run.Append(appended);
        while (run.Step(out _)) { }
        var result = run.Result();
        for (int r = 0; r < 2; r++)
        {
            int[] head = result.Tokens[r][..3], tail = result.Tokens[r][3..];
            using var alone = new Generator(_session, 1);
            var once = alone.Generate([[.. prompts[r], .. head, .. appended[r]]], o with { MaxNewTokens = 7 }).Tokens[0];
            Assert.That(tail, Is.EqualTo(once), $"row {r}");
        }
    }

    /// <summary>An error of a step (here: the generator moved on under the stream) reaches the reader of the stream.</summary>
    [Test]
    public void AnAppendInsideTheStreamEndsIt()
    {
        using var g = new Generator(_session, 1);
        int seen = 0;
        Assert.That(async () =>
        {
            await foreach (var t in g.GenerateAsync(Prompt, Greedy))
            {
                if (++seen == 2) g.Append([5]); // not the run's Append: it ends the run
            }
        }, Throws.InvalidOperationException.With.Message.Contains("has ended"));
        Assert.That(seen, Is.EqualTo(2));
    }

    [Test]
    public void OtherCallsEndTheRunAndBadArgumentsNameTheParameter()
    {
        using var g = new Generator(_session, 1);
        var run = g.Start([Prompt], Greedy);
        run.Step(out _);
        g.Append([1, 2]);
        Assert.That(() => run.Step(out _), Throws.InvalidOperationException);
        Assert.That(() => run.Append([3]), Throws.InvalidOperationException);
        var second = g.Start([[]], Greedy);
        g.Reset();
        Assert.That(() => second.Step(out _), Throws.InvalidOperationException, "Reset ends it");

        Assert.That(() => g.Start([Prompt, Prompt], Greedy), Throws.TypeOf<XLstmOnnxException>()
            .With.Message.EqualTo("Generator.Start(prompts) must have one list per row of the generator's batch, 1; found 2."));
        Assert.That(() => g.GenerateAsync(Prompt, Greedy with { MaxNewTokens = -1 }), Throws.TypeOf<XLstmOnnxException>()
            .With.Message.EqualTo("GenerationOptions.MaxNewTokens must be zero or positive; found -1.")
            .And.Property(nameof(XLstmOnnxException.Parameter)).EqualTo("GenerationOptions.MaxNewTokens"), "checked when the stream is made, not when it is read");
        using var two = new Generator(_session, 2);
        Assert.That(() => two.GenerateAsync(Prompt, Greedy), Throws.TypeOf<XLstmOnnxException>()
            .With.Property(nameof(XLstmOnnxException.Parameter)).EqualTo("Generator.GenerateAsync(prompt)")
            .And.Message.Contains("batch 2"));
    }
}
