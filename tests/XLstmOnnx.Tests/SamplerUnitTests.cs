using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>
/// The host sampler's edges, each pinned by a value (the mutants tools/mutation found alive): ids at the vocabulary
/// limit, each penalty on its own, ties (lowest id first, as ONNX TopK and torch.argmax), top-p and min-p exactly at
/// their thresholds, logits far from zero, and the random numbers themselves (SplitMix64's published first outputs).
/// </summary>
[TestFixture]
public class SamplerUnitTests
{
    private const int Vocab = 300;

    /// <summary>Logits of −1e9 everywhere (never chosen: exp underflows to 0) but at <paramref name="set"/>.</summary>
    private static float[] Logits(params (int Id, float Value)[] set)
    {
        var l = Enumerable.Repeat(-1e9f, Vocab).ToArray();
        foreach (var (id, v) in set) l[id] = v;
        return l;
    }

    /// <summary>The ids a sampler chooses over many seeds.</summary>
    private static HashSet<int> Choices(GenerationOptions o, float[] logits, int seeds = 200) =>
        [.. Enumerable.Range(1, seeds).Select(s => new Sampler(o with { Seed = (ulong)s }, Vocab).Next(logits))];

    [Test]
    public void IdsAtOrAboveTheVocabularyAreIgnored()
    {
        var s = new Sampler(new GenerationOptions { Greedy = true, RepetitionPenalty = 2, FrequencyPenalty = 1, LogitBias = new Dictionary<int, float> { [Vocab] = 100, [7] = 1 } }, Vocab);
        s.Observe(Vocab);
        s.ObserveOutput(Vocab);
        s.ObserveOutput(-1);
        Assert.That(s.Next(Logits((3, 2f), (7, 1.5f))), Is.EqualTo(7), "the bias on 7 counts, the one past the vocabulary does not");
    }

    [TestCase(1.0, 0.0, TestName = "frequency penalty alone")]
    [TestCase(0.0, 1.0, TestName = "presence penalty alone")]
    public void EachPenaltyActsAlone(double frequency, double presence)
    {
        var s = new Sampler(new GenerationOptions { Greedy = true, FrequencyPenalty = frequency, PresencePenalty = presence }, Vocab);
        s.ObserveOutput(5);
        // 5 leads by 0.5; a penalty of 1 on it (count 1) puts 9 ahead
        Assert.That(s.Next(Logits((5, 3f), (9, 2.5f))), Is.EqualTo(9));
        var none = new Sampler(new GenerationOptions { Greedy = true }, Vocab);
        none.ObserveOutput(5);
        Assert.That(none.Next(Logits((5, 3f), (9, 2.5f))), Is.EqualTo(5), "no penalty: 5 stays ahead");
    }

    [Test]
    public void TiesGoToTheLowestId()
    {
        Assert.That(Sampler.ArgMax([1f, 3f, 3f, 2f]), Is.EqualTo(1));
        // every id tied: top-k 1 keeps the lowest, whatever the seed
        var flat = new float[Vocab];
        Assert.That(Choices(new GenerationOptions { Temperature = 1, TopK = 1 }, flat, 20), Is.EquivalentTo(new[] { 0 }));
        Assert.That(Choices(new GenerationOptions { Temperature = 1, TopK = 3 }, flat, 200), Is.EquivalentTo(new[] { 0, 1, 2 }));
    }

    [Test]
    public void TopPKeepsTokensUntilTheirMassReachesP()
    {
        // two tokens of exactly 0.5 each: top-p 0.5 is reached by the first (lower id) alone
        var two = Logits((40, 10f), (12, 10f));
        Assert.That(Choices(new GenerationOptions { Temperature = 1, TopP = 0.5 }, two), Is.EquivalentTo(new[] { 12 }));
        Assert.That(Choices(new GenerationOptions { Temperature = 1, TopP = 0.51 }, two), Is.EquivalentTo(new[] { 12, 40 }));
    }

    [Test]
    public void MinPKeepsTokensAtLeastPTimesTheMostLikely()
    {
        // p ∝ 1, e^−1 (0.37), e^−1: min-p 0.5 keeps only the first; 0.3 keeps all three
        var three = Logits((4, 1f), (8, 0f), (9, 0f));
        Assert.That(Choices(new GenerationOptions { Temperature = 1, MinP = 0.5 }, three), Is.EquivalentTo(new[] { 4 }));
        Assert.That(Choices(new GenerationOptions { Temperature = 1, MinP = 0.3 }, three), Is.EquivalentTo(new[] { 4, 8, 9 }));
        // exactly at the threshold: kept (p ≥ min_p · p_max)
        Assert.That(Choices(new GenerationOptions { Temperature = 1, MinP = 1.0 }, Logits((4, 1f), (8, 1f))), Is.EquivalentTo(new[] { 4, 8 }));
    }

    [Test]
    public void LogitsFarFromZeroSampleLikeShiftedOnes()
    {
        // softmax is shift-invariant: logits near 100 (exp would overflow float unless the max is subtracted) draw
        // exactly what the same logits near 0 draw, seed by seed
        var near0 = Logits((1, 0.5f), (2, 0f), (3, -0.5f));
        var near100 = Logits((1, 100.5f), (2, 100f), (3, 99.5f));
        var o = new GenerationOptions { Temperature = 1 };
        for (ulong seed = 1; seed <= 50; seed++)
        {
            Assert.That(new Sampler(o with { Seed = seed }, Vocab).Next(near100), Is.EqualTo(new Sampler(o with { Seed = seed }, Vocab).Next(near0)), $"seed {seed}");
        }
        Assert.That(Choices(o, near100), Is.EquivalentTo(new[] { 1, 2, 3 }));
    }

    /// <summary>SplitMix64 (Steele, Lea, Flood 2014; Vigna's splitmix64.c): from state 0 the first outputs are
    /// 0xE220A8397B1DCDAF and 0x6E789E6AA1B965F4; a uniform double is the top 53 bits.</summary>
    [Test]
    public void RandomNumbersAreSplitMix64()
    {
        ulong state = 0;
        double a = SequenceDecoder.NextUniform(ref state), b = SequenceDecoder.NextUniform(ref state);
        Assert.That(a, Is.EqualTo((0xE220A8397B1DCDAFUL >> 11) * (1.0 / (1UL << 53))));
        Assert.That(b, Is.EqualTo((0x6E789E6AA1B965F4UL >> 11) * (1.0 / (1UL << 53))));
        Assert.That(state, Is.EqualTo(unchecked(2 * 0x9E3779B97F4A7C15UL)));
    }
}
