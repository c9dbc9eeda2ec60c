namespace XLstmOnnx.Runtime.Generation;

/// <summary>
/// The plain reference of the exported sampler (<c>sampler.onnx</c>, which chooses tokens on the device for generation
/// and serving): the same steps, one sequence at a time, on the host: the logit bias, transformers' repetition penalty,
/// OpenAI's frequency and presence penalties (vLLM's order), then temperature, top-k, top-p, min-p and a draw in
/// transformers' order. Tests hold the sampler to it.
/// The random generator (SplitMix64) is the decoders' own, so a seed means the same draws everywhere.
/// </summary>
public sealed class Sampler
{
    private readonly GenerationOptions _o;
    private readonly int _vocab;
    private readonly float[] _scores;
    private readonly int[] _order;
    private readonly float[] _keys;
    private readonly bool[] _seen;
    private readonly int[] _outputCounts;
    private ulong _rng;

    /// <param name="options">Sampling settings.</param>
    /// <param name="vocab">Ids at or above this are never chosen (the embedding may be padded past the tokenizer).</param>
    public Sampler(GenerationOptions options, int vocab)
    {
        _o = options;
        _vocab = vocab;
        _scores = new float[vocab];
        _order = new int[vocab];
        _keys = new float[vocab];
        _seen = new bool[vocab];
        _outputCounts = new int[vocab];
        _rng = options.Seed;
    }

    /// <summary>Marks a token as part of the sequence (prompt or generated) for the repetition penalty.</summary>
    public void Observe(int token)
    {
        if ((uint)token < (uint)_vocab) _seen[token] = true;
    }

    /// <summary>Counts a generated token: the repetition penalty sees it, and so do the frequency and presence penalties (output only).</summary>
    public void ObserveOutput(int token)
    {
        Observe(token);
        if ((uint)token < (uint)_vocab) _outputCounts[token]++;
    }

    /// <summary>The next token given the last position's logits.</summary>
    public int Next(ReadOnlySpan<float> logits)
    {
        var s = Scores(logits);
        if (_o.Greedy) return ArgMax(s);
        int keep = Candidates(s);
        double total = 0;
        for (int r = 0; r < keep; r++) total += _keys[r];
        double u = NextDouble() * total;
        for (int r = 0; r < keep; r++)
        {
            u -= _keys[r];
            if (u < 0) return _order[r];
        }
        return _order[keep - 1];
    }

    /// <summary>
    /// The distribution <see cref="Next"/> draws from for these logits, by id (0 for ids it never chooses; greedy: 1 on
    /// the argmax), through the same steps; draws nothing. For tests against transformers' probabilities.
    /// </summary>
    internal double[] Distribution(ReadOnlySpan<float> logits)
    {
        var p = new double[_vocab];
        var s = Scores(logits);
        if (_o.Greedy)
        {
            p[ArgMax(s)] = 1;
            return p;
        }
        int keep = Candidates(s);
        double total = 0;
        for (int r = 0; r < keep; r++) total += _keys[r];
        for (int r = 0; r < keep; r++) p[_order[r]] = _keys[r] / total;
        return p;
    }

    /// <summary>The logits after the bias and the penalties (in <c>_scores</c>).</summary>
    private Span<float> Scores(ReadOnlySpan<float> logits)
    {
        var s = _scores.AsSpan();
        logits[.._vocab].CopyTo(s);
        if (_o.LogitBias is { } bias)
        {
            foreach (var (id, b) in bias) if ((uint)id < (uint)_vocab) s[id] += b;
        }
        if (_o.RepetitionPenalty != 1.0)
        {
            float p = (float)_o.RepetitionPenalty;
            for (int i = 0; i < s.Length; i++)
            {
                if (_seen[i]) s[i] = s[i] > 0 ? s[i] / p : s[i] * p; // transformers' RepetitionPenaltyLogitsProcessor
            }
        }
        if (_o.FrequencyPenalty != 0 || _o.PresencePenalty != 0)
        {
            // OpenAI's formula, in the graph's float steps: logits - frequency·count - presence·(count > 0)
            float f = (float)_o.FrequencyPenalty, p = (float)_o.PresencePenalty;
            for (int i = 0; i < s.Length; i++)
            {
                float c = _outputCounts[i];
                s[i] -= f * c;
                s[i] -= p * (c > 0 ? 1f : 0f);
            }
        }
        return s;
    }

    /// <summary>
    /// Temperature, then top-k, top-p and min-p in transformers' order: returns how many candidates are kept; ids by
    /// falling score are in <c>_order</c>, the kept ones' unnormalised probabilities in <c>_keys</c>.
    /// </summary>
    private int Candidates(Span<float> s)
    {
        float invT = (float)(1.0 / _o.Temperature);
        for (int i = 0; i < s.Length; i++) s[i] *= invT;
        // sort ids by score, descending (stable on ties by id, like a stable argsort)
        int n = s.Length;
        for (int i = 0; i < n; i++)
        {
            _order[i] = i;
            _keys[i] = -s[i];
        }
        // a stable order: ties go to the lower id first (ONNX TopK's rule)
        var scores = _scores;
        Array.Sort(_order, 0, n, Comparer<int>.Create((a, b) => scores[a] != scores[b] ? scores[b].CompareTo(scores[a]) : a.CompareTo(b)));
        int keep = _o.TopK > 0 ? Math.Min(_o.TopK, n) : n;
        // probabilities of the kept candidates
        float max = s[_order[0]];
        double total = 0;
        for (int r = 0; r < keep; r++) total += _keys[r] = (float)Math.Exp(s[_order[r]] - max);
        if (_o.TopP < 1.0)
        {
            double cum = 0;
            int r = 0;
            while (r < keep)
            {
                cum += _keys[r] / total;
                r++;
                if (cum >= _o.TopP) break;
            }
            keep = Math.Max(r, 1);
        }
        if (_o.MinP > 0)
        {
            double threshold = _o.MinP * _keys[0]; // relative to the most likely token
            int r = 1;
            while (r < keep && _keys[r] >= threshold) r++;
            keep = r;
        }
        return keep;
    }

    private double NextDouble() => SequenceDecoder.NextUniform(ref _rng);

    /// <summary>
    /// Whether every value is finite (no NaN, no ±Inf): one vectorised pass, x − x being 0 exactly for finite x. The host
    /// side of the check the exported graphs make on the device (GraphNames.NonFiniteToken).
    /// </summary>
    public static bool AllFinite(ReadOnlySpan<float> values)
    {
        int i = 0;
        if (System.Numerics.Vector.IsHardwareAccelerated)
        {
            var vectors = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(values);
            foreach (var v in vectors)
            {
                if (!System.Numerics.Vector.EqualsAll(v - v, System.Numerics.Vector<float>.Zero)) return false;
            }
            i = vectors.Length * System.Numerics.Vector<float>.Count;
        }
        for (; i < values.Length; i++) if (!float.IsFinite(values[i])) return false;
        return true;
    }

    /// <summary>The first index of the largest value (torch.argmax's choice on ties).</summary>
    public static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++)
        {
            if (values[i] > values[best]) best = i;
        }
        return best;
    }
}
