using XLstmOnnx.Contract;

namespace XLstmOnnx.Runtime;

/// <summary>Mean next-token cross-entropy over scored positions, and its perplexity.</summary>
public sealed record ScoreResult(double TotalNll, long Tokens)
{
    public double Loss => Tokens > 0 ? TotalNll / Tokens : double.NaN;
    public double Perplexity => Math.Exp(Loss);
}

/// <summary>
/// transformers' <c>labels</c> loss: <c>CrossEntropy(logits[..., :-1, :], labels[..., 1:])</c> on the capped logits,
/// mean over labels that are not -100. Texts of any length run in windows with the state carried across them, so the
/// result equals one pass over the whole text.
/// </summary>
public static class Scorer
{
    public const int IgnoreIndex = -100;

    /// <summary>The name errors give <c>window</c>.</summary>
    public const string WindowParameter = $"{nameof(Scorer)}.{nameof(Score)}(window)";

    /// <param name="session">A model exported with logits for every position.</param>
    /// <param name="ids">The token ids.</param>
    /// <param name="labels">Labels aligned with <paramref name="ids"/> (default: the ids); -100 is ignored.</param>
    /// <param name="window">Tokens per call.</param>
    /// <param name="progress">Fraction done.</param>
    public static ScoreResult Score(XLstmSession session, IReadOnlyList<int> ids, IReadOnlyList<int>? labels = null, int window = 1024, IProgress<double>? progress = null)
    {
        if (session.Manifest.Logits != LogitsOutput.All)
        {
            throw new XLstmOnnxException($"{session.Directory}: scoring needs logits for every position; this model was exported with ExportOptions.LastLogitsOnly.");
        }
        labels ??= ids;
        if (labels.Count != ids.Count) throw new XLstmOnnxException($"labels: expected {ids.Count} values (one per id); got {labels.Count}.");
        if (window <= 0) throw XLstmOnnxException.MustBe(WindowParameter, "positive (tokens per call)", window);
        int v = (int)session.Manifest.VocabSize;
        var state = session.CreateState(1);
        double nll = 0;
        long count = 0;
        for (int a = 0; a < ids.Count; a += window)
        {
            int w = Math.Min(window, ids.Count - a);
            var chunk = new long[w];
            for (int j = 0; j < w; j++) chunk[j] = ids[a + j];
            var logits = session.Run(chunk, w, state);
            for (int j = 0; j < w; j++)
            {
                int t = a + j + 1; // position a+j predicts label t
                if (t >= ids.Count || labels[t] == IgnoreIndex) continue;
                if (labels[t] < 0 || labels[t] >= v) throw new XLstmOnnxException($"labels[{t}] = {labels[t]} is outside [0, {v}) and is not -100.");
                nll += Nll(logits.At(0, j), labels[t]);
                count++;
            }
            progress?.Report((double)(a + w) / ids.Count);
        }
        return new ScoreResult(nll, count);
    }

    /// <summary>−log softmax(logits)[target], in double.</summary>
    public static double Nll(ReadOnlySpan<float> logits, int target)
    {
        double max = double.NegativeInfinity;
        foreach (var x in logits) max = Math.Max(max, x);
        double sum = 0;
        foreach (var x in logits) sum += Math.Exp(x - max);
        return Math.Log(sum) + max - logits[target];
    }
}

