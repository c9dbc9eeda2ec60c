using Microsoft.ML.OnnxRuntime;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>
/// The exported sampler (sampler.onnx, which chooses tokens on the device) against its plain reference
/// (<see cref="Sampler"/>), row by row: the same token for the same logits, settings and random number.
/// </summary>
[TestFixture]
public class SamplerModelTests
{
    private const int Vocab = 300;

    private sealed record Outputs(long[] Next, float[] LogProb, float[] Counts, float[] OutputCounts, long[] TopIds, float[] TopLogProbs);

    private static Outputs Run(float[] logits, double[] parameters, float[] counts, long vocabLimit, float[]? outputCounts = null, float[]? bias = null)
    {
        int batch = logits.Length / Vocab;
        using var session = new InferenceSession(SamplerBuilder.Build(Vocab));
        using var l = OrtValue.CreateTensorValueFromMemory(logits, [batch, 1, Vocab]);
        using var p = OrtValue.CreateTensorValueFromMemory(parameters, [batch, SamplerModel.ParamCount]);
        using var c = OrtValue.CreateTensorValueFromMemory(counts, [batch, Vocab]);
        using var o = OrtValue.CreateTensorValueFromMemory(outputCounts ?? new float[batch * Vocab], [batch, Vocab]);
        using var b = OrtValue.CreateTensorValueFromMemory(bias ?? new float[batch * Vocab], [batch, Vocab]);
        using var v = OrtValue.CreateTensorValueFromMemory(new[] { vocabLimit }, [1]);
        using var run = new RunOptions();
        using var outputs = session.Run(run, [SamplerModel.Logits, SamplerModel.Params, SamplerModel.Counts, SamplerModel.OutputCounts, SamplerModel.Bias, SamplerModel.VocabLimit],
            [l, p, c, o, b, v],
            [SamplerModel.NextToken, SamplerModel.LogProb, SamplerModel.CountsOut, SamplerModel.OutputCountsOut, SamplerModel.TopIds, SamplerModel.TopLogProbs]);
        return new(outputs[0].GetTensorDataAsSpan<long>().ToArray(), outputs[1].GetTensorDataAsSpan<float>().ToArray(), outputs[2].GetTensorDataAsSpan<float>().ToArray(),
            outputs[3].GetTensorDataAsSpan<float>().ToArray(), outputs[4].GetTensorDataAsSpan<long>().ToArray(), outputs[5].GetTensorDataAsSpan<float>().ToArray());
    }

    private static GenerationOptions Settings(Random rng, int i) => (i % 10) switch
    {
        0 => new GenerationOptions { Greedy = true },
        1 => new GenerationOptions { Greedy = true, RepetitionPenalty = 1.3 },
        2 => new GenerationOptions { Temperature = 0.7 + rng.NextDouble() },
        3 => new GenerationOptions { Temperature = 1.1, TopK = 1 + rng.Next(40) },
        4 => new GenerationOptions { Temperature = 0.9, TopP = 0.5 + 0.49 * rng.NextDouble(), MinP = 0.02 },
        5 => new GenerationOptions { Temperature = 1.2, TopK = 50, TopP = 0.9, MinP = 0.05, RepetitionPenalty = 1.15 },
        // OpenAI's penalties and logit bias, greedy (the choice shows the arithmetic) and sampled
        6 => new GenerationOptions { Greedy = true, PresencePenalty = 1.5, FrequencyPenalty = 0.7 },
        7 => new GenerationOptions { Temperature = 0.8, PresencePenalty = -0.6 + rng.NextDouble(), FrequencyPenalty = 2 * rng.NextDouble(), RepetitionPenalty = 1.1 },
        8 => new GenerationOptions { Greedy = true, LogitBias = Bias(rng), FrequencyPenalty = 1.2 },
        _ => new GenerationOptions { Temperature = 1.0, TopK = 20, LogitBias = Bias(rng) },
    } with { Seed = (ulong)(1000 + i) };

    /// <summary>A few biases, one strong enough to move the argmax, one that bans an id.</summary>
    private static Dictionary<int, float> Bias(Random rng)
    {
        var bias = new Dictionary<int, float> { [rng.Next(Vocab - 20)] = 8, [rng.Next(Vocab - 20)] = -100 };
        for (int k = 0; k < 5; k++) bias[rng.Next(Vocab - 20)] = (float)(rng.NextDouble() * 4 - 2);
        return bias;
    }

    [Test]
    public void EveryRowChoosesWhatTheReferenceChooses()
    {
        var rng = new Random(7);
        const int batch = 96;
        const int limit = Vocab - 20; // the last 20 ids are "padded embeddings": never chosen
        var logits = new float[batch * Vocab];
        var parameters = new double[batch * SamplerModel.ParamCount];
        var counts = new float[batch * Vocab];
        var outputCounts = new float[batch * Vocab];
        var bias = new float[batch * Vocab];
        var expected = new int[batch];
        var seen = new List<int>[batch];
        var settings = new GenerationOptions[batch];
        for (int r = 0; r < batch; r++)
        {
            // peaked and flat rows: scale 0.5 to 6 (distinct values, so no ties decide a case)
            double scale = 0.5 + 5.5 * rng.NextDouble();
            for (int j = 0; j < Vocab; j++) logits[r * Vocab + j] = (float)(scale * (rng.NextDouble() * 2 - 1));
            logits[r * Vocab + limit + r % 20] = 100; // the best logit lies outside the vocabulary limit
            var o = settings[r] = Settings(rng, r);
            seen[r] = [.. Enumerable.Range(0, 12).Select(_ => rng.Next(limit))];
            foreach (int t in seen[r]) counts[r * Vocab + t]++;
            // an output of 10 tokens drawn from 6 ids (repeats: the frequency penalty counts them), 3 of them near the top
            int[] generated = [.. Enumerable.Range(0, 10).Select(k => k < 3 ? TopIdOf(logits.AsSpan(r * Vocab, limit), k) : rng.Next(limit) % 6)];
            var reference = new Sampler(o, limit);
            foreach (int t in seen[r]) reference.Observe(t);
            foreach (int t in generated)
            {
                counts[r * Vocab + t]++;
                outputCounts[r * Vocab + t]++;
                reference.ObserveOutput(t);
            }
            foreach (var (id, b) in o.LogitBias ?? new Dictionary<int, float>()) bias[r * Vocab + id] = b;
            expected[r] = reference.Next(logits.AsSpan(r * Vocab, Vocab));
            new SequenceDecoder(o, new ModelManifest(), null, false).WriteParams(parameters.AsSpan(r * SamplerModel.ParamCount, SamplerModel.ParamCount));
        }
        var (next, logProb, countsOut, outputCountsOut, topIds, topLogProbs) = Run(logits, parameters, counts, limit, outputCounts, bias);
        int k = SamplerModel.TopCount;
        for (int r = 0; r < batch; r++)
        {
            Assert.That(next[r], Is.EqualTo(expected[r]), $"row {r}: {settings[r] with { Seed = 0 }}");
            Assert.That(next[r], Is.LessThan(limit), $"row {r} chose an id past the vocabulary limit");
            // the raw model log-probability of the chosen id, over the ids below the limit
            var row = logits.AsSpan(r * Vocab, limit);
            float max = row.ToArray().Max();
            double lse = Math.Log(row.ToArray().Sum(x => Math.Exp(x - max))) + max;
            Assert.That(logProb[r], Is.EqualTo(row[(int)next[r]] - lse).Within(1e-4), $"row {r}: log-probability (float32 log-softmax over {limit} values)");
            // the top ids: the raw logits' order (bias and penalties do not change what is reported), with their log-probabilities
            for (int i = 0; i < k; i++)
            {
                int id = TopIdOf(row, i);
                Assert.That(topIds[r * k + i], Is.EqualTo(id), $"row {r}: top id {i}");
                Assert.That(topLogProbs[r * k + i], Is.EqualTo(row[id] - lse).Within(1e-4), $"row {r}: top log-probability {i}");
            }
            for (int j = 0; j < Vocab; j++)
            {
                float want = counts[r * Vocab + j] + (j == next[r] ? 1 : 0);
                Assert.That(countsOut[r * Vocab + j], Is.EqualTo(want), $"row {r}: count of id {j} after the choice");
                Assert.That(outputCountsOut[r * Vocab + j], Is.EqualTo(outputCounts[r * Vocab + j] + (j == next[r] ? 1 : 0)), $"row {r}: output count of id {j} after the choice");
            }
        }
        Assert.That(next.Distinct().Count(), Is.GreaterThan(batch / 3), "rows choose different ids (the check has teeth)");
        // the new steps move choices: without the bias and the penalties, the greedy rows that have them choose otherwise
        var plain = Run(logits, parameters, counts, limit).Next;
        int moved = Enumerable.Range(0, batch).Count(r => settings[r] is { Greedy: true } s && (s.LogitBias is not null || s.PresencePenalty != 0) && plain[r] != next[r]);
        Assert.That(moved, Is.GreaterThan(batch / 10 / 2), "bias and penalties change greedy choices");
    }

    /// <summary>The id of rank <paramref name="rank"/> in <paramref name="row"/>, ties to the lower id.</summary>
    private static int TopIdOf(ReadOnlySpan<float> row, int rank)
    {
        var values = row.ToArray();
        return Enumerable.Range(0, values.Length).OrderByDescending(i => values[i]).ThenBy(i => i).ElementAt(rank);
    }

    [Test]
    public void TheSameDrawChoosesTheSameTokenAloneAndInABatch()
    {
        var rng = new Random(11);
        var logits = new float[8 * Vocab];
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)rng.NextDouble() * 3;
        var parameters = new double[8 * SamplerModel.ParamCount];
        for (int r = 0; r < 8; r++) new SequenceDecoder(new GenerationOptions { Temperature = 1.5, TopP = 0.95, Seed = (ulong)r }, new ModelManifest(), null, false)
            .WriteParams(parameters.AsSpan(r * SamplerModel.ParamCount, SamplerModel.ParamCount));
        var batch = Run(logits, parameters, new float[8 * Vocab], Vocab).Next;
        for (int r = 0; r < 8; r++)
        {
            var alone = Run(logits[(r * Vocab)..((r + 1) * Vocab)], parameters[(r * SamplerModel.ParamCount)..((r + 1) * SamplerModel.ParamCount)], new float[Vocab], Vocab).Next;
            Assert.That(alone[0], Is.EqualTo(batch[r]), $"row {r}");
        }
    }
}
