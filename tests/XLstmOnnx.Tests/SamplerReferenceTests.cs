using System.Text.Json.Nodes;
using Microsoft.ML.OnnxRuntime;
using XLstmOnnx.Contract;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>
/// The sampler against transformers: the distribution each draw is taken from, for the host reference
/// (<see cref="Sampler"/>) and the exported graph (sampler.onnx, through a probe output), equals transformers'
/// probabilities after the logits processors <c>generate</c> builds for the same GenerationConfig (repetition penalty,
/// temperature, top-k, top-p, min-p, in its order), on logits with negative values and ids seen before
/// (tests/fixtures/sampler_reference.safetensors, written by tools/reference/make_sampler_fixtures.py); and the draws
/// themselves follow those probabilities (chi-square goodness of fit over many seeded draws).
/// </summary>
[TestFixture]
public class SamplerReferenceTests
{
    private static readonly string FixturePath = Path.Combine(TestPaths.Fixtures, "sampler_reference.safetensors");

    // Probabilities are compared with |ours - transformers| <= Atol + Rtol·p. Rtol: a logit of magnitude up to ~40 after
    // the temperature carries a float32 rounding of ~4e-6 (ours multiplies by 1/T, transformers divides by T), which
    // moves its exp by that fraction; float32 exp and transformers' float32 softmax add ~1e-6. Atol covers the smallest
    // probabilities, whose relative rounding is the same but which sit under float32's softmax sum error. A planted
    // bug moves some probability by 3e-3 to 0.3 (the fixture's header lists how far each moves each case).
    private const double Atol = 1e-7, Rtol = 2e-5;

    /// <summary>One row of a case: the logits, the ids seen so far, transformers' probabilities, the settings.</summary>
    public sealed record Row(string Case, int Index, float[] Logits, int[] Seen, float[] Probs, GenerationOptions Options)
    {
        public override string ToString() => $"{Case}[{Index}]";
    }

    private static readonly Lazy<(int Vocab, Row[] Rows)> Fixture = new(Load);

    private static (int Vocab, Row[] Rows) Load()
    {
        using var f = SafetensorsFile.Open(FixturePath);
        Assert.That(f.Metadata["format"], Is.EqualTo("xlstm-sampler-reference-v1"));
        int vocab = int.Parse(f.Metadata["vocab"], System.Globalization.CultureInfo.InvariantCulture);
        var rows = new List<Row>();
        foreach (var c in JsonNode.Parse(f.Metadata["cases"])!.AsArray())
        {
            string name = (string)c!["name"]!;
            var p = c["params"]!;
            var options = new GenerationOptions
            {
                Temperature = (double)p["temperature"]!,
                TopK = (int)p["top_k"]!,
                TopP = (double)p["top_p"]!,
                MinP = p["min_p"] is { } m ? (double)m : 0,
                RepetitionPenalty = (double)p["repetition_penalty"]!,
            };
            var logits = f.Get($"{name}.logits");
            int count = (int)logits.Shape[0];
            var l = logits.ToFloat32();
            var seen = f.Get($"{name}.seen_ids");
            int s = (int)seen.Shape[1];
            var ids = seen.ToInt64();
            var probs = f.Get($"{name}.probs").ToFloat32();
            for (int r = 0; r < count; r++)
            {
                rows.Add(new Row(name, r, l[(r * vocab)..((r + 1) * vocab)], [.. ids[(r * s)..((r + 1) * s)].Select(i => (int)i)],
                    probs[(r * vocab)..((r + 1) * vocab)], options with { Seed = (ulong)(9000 + rows.Count) }));
            }
        }
        return (vocab, [.. rows]);
    }

    private static int Vocab => Fixture.Value.Vocab;

    public static IEnumerable<TestCaseData> Rows() => Fixture.Value.Rows.Select(r => new TestCaseData(r).SetName($"sampler {r}"));

    [Test]
    public void TheFixtureCoversTheSettingsAndHasTeeth()
    {
        var rows = Fixture.Value.Rows;
        Assert.Multiple(() =>
        {
            Assert.That(rows, Has.Length.GreaterThanOrEqualTo(30));
            Assert.That(rows.Count(r => r.Logits.Any(x => x < 0) && r.Options.RepetitionPenalty != 1), Is.GreaterThanOrEqualTo(6), "penalised rows with negative logits");
            Assert.That(rows.Count(r => r.Logits.All(x => x < 0)), Is.GreaterThanOrEqualTo(4), "rows whose every logit is negative");
            Assert.That(rows.Count(r => r.Options.TopP < 1 && r.Options.Temperature != 1 && r.Probs.Count(p => p > 0) > 1), Is.GreaterThanOrEqualTo(3), "top-p after a temperature, several ids kept");
            Assert.That(rows.Count(r => r.Options.TopK > 0 && r.Options.TopP < 1 && r.Options.MinP > 0 && r.Options.RepetitionPenalty != 1), Is.GreaterThanOrEqualTo(4), "all processors at once");
            Assert.That(rows.Count(r => r.Options.MinP > 0 && r.Probs.Count(p => p > 0) is > 1 and < 500), Is.GreaterThanOrEqualTo(2), "min-p cutting some ids");
        });
    }

    [TestCaseSource(nameof(Rows))]
    public void HostSamplerDistributionEqualsTransformers(Row row)
    {
        var sampler = new Sampler(row.Options, Vocab);
        foreach (int t in row.Seen) sampler.Observe(t);
        ExpectEqual(row, sampler.Distribution(row.Logits));
    }

    [Test]
    public void ExportedSamplerDistributionEqualsTransformers()
    {
        var rows = Fixture.Value.Rows;
        var (probs, _) = RunGraph(rows.Select(r => (r, r.Options.Seed)).ToArray());
        Assert.Multiple(() =>
        {
            for (int i = 0; i < rows.Length; i++) ExpectEqual(rows[i], probs[i]);
        });
    }

    private static void ExpectEqual(Row row, double[] ours)
    {
        int kept = 0;
        double worst = 0;
        for (int id = 0; id < Vocab; id++)
        {
            double want = row.Probs[id];
            if (want > 0) kept++;
            Assert.That(ours[id] > 0, Is.EqualTo(want > 0), $"{row}: id {id} is {(want > 0 ? "kept" : "removed")} by transformers (p = {want:E3}, ours {ours[id]:E3})");
            Assert.That(ours[id], Is.EqualTo(want).Within(Atol + Rtol * want), $"{row}: probability of id {id}");
            worst = Math.Max(worst, Math.Abs(ours[id] - want) / Math.Max(want, 1e-30));
        }
        TestContext.Out.WriteLine($"{row}: {kept} ids kept, worst relative difference {worst:E2}");
    }

    /// <summary>
    /// Runs sampler.onnx (with its probe outputs) once over the given rows, each with the uniform number of a decoder
    /// seeded as given: the by-id distributions and the chosen ids.
    /// </summary>
    private static (double[][] Probs, long[] Next) RunGraph(IReadOnlyList<(Row Row, ulong Seed)> rows)
    {
        int batch = rows.Count, v = Vocab;
        var logits = new float[batch * v];
        var parameters = new double[batch * SamplerModel.ParamCount];
        var counts = new float[batch * v];
        for (int b = 0; b < batch; b++)
        {
            var (row, seed) = rows[b];
            row.Logits.CopyTo(logits, b * v);
            foreach (int t in row.Seen) counts[b * v + t]++;
            new SequenceDecoder(row.Options with { Seed = seed }, new ModelManifest(), null, false).WriteParams(parameters.AsSpan(b * SamplerModel.ParamCount, SamplerModel.ParamCount));
        }
        using var session = new InferenceSession(SamplerBuilder.Build(v, probe: true));
        using var l = OrtValue.CreateTensorValueFromMemory(logits, [batch, 1, v]);
        using var p = OrtValue.CreateTensorValueFromMemory(parameters, [batch, SamplerModel.ParamCount]);
        using var c = OrtValue.CreateTensorValueFromMemory(counts, [batch, v]);
        using var o = OrtValue.CreateTensorValueFromMemory(new float[batch * v], [batch, v]);
        using var bias = OrtValue.CreateTensorValueFromMemory(new float[batch * v], [batch, v]);
        using var limit = OrtValue.CreateTensorValueFromMemory(new[] { (long)v }, [1]);
        using var run = new RunOptions();
        using var outputs = session.Run(run, [SamplerModel.Logits, SamplerModel.Params, SamplerModel.Counts, SamplerModel.OutputCounts, SamplerModel.Bias, SamplerModel.VocabLimit],
            [l, p, c, o, bias, limit], [SamplerBuilder.ProbeProbabilities, SamplerBuilder.ProbeOrder, SamplerModel.NextToken]);
        var byRank = outputs[0].GetTensorDataAsSpan<double>();
        var order = outputs[1].GetTensorDataAsSpan<long>();
        var probs = new double[batch][];
        for (int b = 0; b < batch; b++)
        {
            probs[b] = new double[v];
            for (int r = 0; r < v; r++) probs[b][order[b * v + r]] = byRank[b * v + r];
        }
        return (probs, outputs[2].GetTensorDataAsSpan<long>().ToArray());
    }

    // ---- the draw itself ----

    // Rows with several ids kept and different shapes: a flatter one after a high temperature, top-p after a high
    // temperature, a penalised row whose every logit is negative, every processor at once, min-p after a temperature.
    private static readonly string[] DrawRows = ["temp_high[1]", "top_p_temp_high[0]", "penalty[0]", "all_b[0]", "min_p_temp[0]"];

    // α = 0.001 per row: were the seeds random, a correct sampler would fail a row's test once in a thousand runs. The
    // seeds are fixed, so the outcome is deterministic (and passes); a sampler that draws from the wrong distribution
    // by a few percent of probability mass on the likely ids, or picks the neighbour of the right id, fails by far.
    private const double Alpha = 1e-3;

    private static Row Find(string name) => Fixture.Value.Rows.Single(r => r.ToString() == name);

    [TestCaseSource(nameof(DrawRowNames))]
    public void HostSamplerDrawsFollowTransformersProbabilities(string name)
    {
        var row = Find(name);
        const int draws = 20_000;
        var sampler = new Sampler(row.Options with { Seed = 0x5EED0000UL + (ulong)name.Length }, Vocab);
        foreach (int t in row.Seen) sampler.Observe(t);
        var counts = new long[Vocab];
        for (int i = 0; i < draws; i++) counts[sampler.Next(row.Logits)]++;
        ExpectFit(row, counts, draws);
    }

    [TestCaseSource(nameof(DrawRowNames))]
    public void ExportedSamplerDrawsFollowTransformersProbabilities(string name)
    {
        var row = Find(name);
        const int draws = 8_000, perRun = 2_000;
        var counts = new long[Vocab];
        // each graph row gets the next uniform number of one seeded sequence (a decoder per row, seeded so that row k
        // draws the k-th number of the sequence: SplitMix64's state advances by a constant per number)
        ulong seed = 0x5EED1000UL + (ulong)name.Length;
        for (int start = 0; start < draws; start += perRun)
        {
            var batch = Enumerable.Range(start, perRun).Select(k => (row, seed + (ulong)k * 0x9E3779B97F4A7C15UL)).ToArray();
            foreach (long id in RunGraph(batch).Next) counts[id]++;
        }
        ExpectFit(row, counts, draws);
    }

    public static IEnumerable<TestCaseData> DrawRowNames() => DrawRows.Select(n => new TestCaseData(n).SetName($"draws {n}"));

    /// <summary>
    /// Pearson's chi-square goodness of fit of <paramref name="counts"/> to the row's probabilities: ids expected at
    /// least 5 times are bins of their own, the rest one pooled bin; a draw of an id transformers never draws fails at once.
    /// </summary>
    private static void ExpectFit(Row row, long[] counts, int draws)
    {
        for (int id = 0; id < Vocab; id++)
        {
            Assert.That(counts[id] == 0 || row.Probs[id] > 0, $"{row}: drew id {id} {counts[id]} times; transformers never draws it");
        }
        var bins = new List<(double Expected, long Observed)>();
        double restE = 0;
        long restO = 0;
        for (int id = 0; id < Vocab; id++)
        {
            double e = draws * (double)row.Probs[id];
            if (e >= 5) bins.Add((e, counts[id]));
            else
            {
                restE += e;
                restO += counts[id];
            }
        }
        if (restE >= 5 || bins.Count == 0) bins.Add((restE, restO));
        else if (restE > 0)
        {
            var (e, o) = bins[^1]; // too small to stand alone: join the least likely bin
            bins[^1] = (e + restE, o + restO);
        }
        Assert.That(bins, Has.Count.GreaterThanOrEqualTo(3), $"{row}: enough bins to test");
        double chi2 = bins.Sum(b => (b.Observed - b.Expected) * (b.Observed - b.Expected) / b.Expected);
        int df = bins.Count - 1;
        double pValue = ChiSquareTail(chi2, df);
        TestContext.Out.WriteLine($"{row}: chi-square {chi2:F1} on {df} degrees of freedom, p = {pValue:E2}");
        Assert.That(pValue, Is.GreaterThan(Alpha), $"{row}: the draws do not follow transformers' probabilities (chi-square {chi2:F1}, df {df})");
    }

    [Test]
    public void ChiSquareTailMatchesTheTables()
    {
        // upper quantiles from the standard tables: df 1 at 0.05 -> 3.841; df 10 at 0.05 -> 18.307; df 50 at 0.001 -> 86.661
        Assert.That(ChiSquareTail(3.841, 1), Is.EqualTo(0.05).Within(1e-4));
        Assert.That(ChiSquareTail(18.307, 10), Is.EqualTo(0.05).Within(1e-4));
        Assert.That(ChiSquareTail(86.661, 50), Is.EqualTo(0.001).Within(1e-5));
    }

    /// <summary>P(X ≥ x) for X chi-square with <paramref name="df"/> degrees of freedom: Q(df/2, x/2).</summary>
    internal static double ChiSquareTail(double x, int df) => x <= 0 ? 1 : UpperGamma(df / 2.0, x / 2);

    /// <summary>The regularised upper incomplete gamma Q(a, x): a series below a + 1, a continued fraction above.</summary>
    private static double UpperGamma(double a, double x)
    {
        double lnPrefix = -x + a * Math.Log(x) - LogGamma(a);
        if (x < a + 1)
        {
            double term = 1 / a, sum = term;
            for (int n = 1; n < 10_000 && Math.Abs(term) > Math.Abs(sum) * 1e-16; n++)
            {
                term *= x / (a + n);
                sum += term;
            }
            return 1 - sum * Math.Exp(lnPrefix);
        }
        // Lentz's method for the continued fraction of Q
        double tiny = 1e-300, b = x + 1 - a, c = 1 / tiny, d = 1 / b, h = d;
        for (int i = 1; i < 10_000; i++)
        {
            double an = -i * (i - a);
            b += 2;
            d = an * d + b;
            if (Math.Abs(d) < tiny) d = tiny;
            c = b + an / c;
            if (Math.Abs(c) < tiny) c = tiny;
            d = 1 / d;
            double delta = d * c;
            h *= delta;
            if (Math.Abs(delta - 1) < 1e-16) break;
        }
        return Math.Exp(lnPrefix) * h;
    }

    /// <summary>ln Γ(a), Lanczos (g = 7, 9 terms; relative error below 1e-13 for a > 0).</summary>
    private static double LogGamma(double a)
    {
        double[] c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
            12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
        if (a < 0.5) return Math.Log(Math.PI / Math.Sin(Math.PI * a)) - LogGamma(1 - a);
        a -= 1;
        double s = c[0];
        for (int i = 1; i < 9; i++) s += c[i] / (a + i);
        double t = a + 7.5;
        return 0.5 * Math.Log(2 * Math.PI) + (a + 0.5) * Math.Log(t) - t + Math.Log(s);
    }
}
