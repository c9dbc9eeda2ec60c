using XLstmOnnx.Contract;
using XLstmOnnx.Contract.Safetensors;

namespace XLstmOnnx.Runtime;

/// <summary>One check of one case: the worst errors over its values and how many lie outside atol + rtol·|expected|.</summary>
public sealed record CheckResult(string Case, string Check, long Values, double MaxAbsError, double MaxRelError, long Violations, string? Note = null)
{
    public bool Passed => Violations == 0;

    /// <summary>
    /// ‖actual − expected‖₂ / ‖expected‖₂ over all the check's values (NaN where the check has no values to measure, as
    /// greedy ids; NaN when a difference is NaN; 0 for equal all-zero values, +∞ for others against all zeros).
    /// </summary>
    public double RelativeL2 { get; init; } = double.NaN;
}

/// <summary>
/// Runs every case of a reference file (format: tools/reference/README.md) through an exported model and compares:
/// <c>NAME.logits</c> after one call on <c>NAME.input_ids</c>; the final states <c>NAME.state.L.{C,n,m}</c>; the hidden
/// states <c>NAME.hidden_states.K</c> (transformers' order), when the reference has them and the model exports them;
/// <c>NAME.step_logits</c> after a prefill of <c>NAME.split</c> tokens and one token per call; and greedy ids
/// <c>NAME.greedy_ids</c> from <c>NAME.prompt_ids</c> (argmax, no EOS stop).
/// </summary>
public static class ReferenceVerifier
{
    public static IReadOnlyList<CheckResult> Verify(XLstmSession session, string referencePath, double atol, double rtol,
        Action<string>? onCase = null)
    {
        if (session.Manifest.Input != GraphNames.InputIds)
        {
            throw new XLstmOnnxException($"verify: the model takes '{session.Manifest.Input}'; reference files hold {GraphNames.InputIds}, so export without ExportOptions.InputsEmbeds.");
        }
        using var file = SafetensorsFile.Open(referencePath);
        var cases = file.Tensors.Select(t => t.Name.Split('.')[0]).Distinct().Order(StringComparer.Ordinal).ToList();
        if (cases.Count == 0) throw new XLstmOnnxException($"{referencePath}: the reference file holds no cases.");
        var results = new List<CheckResult>();
        foreach (var name in cases)
        {
            onCase?.Invoke(name);
            var c = new Case(file, name);
            if (c.Find("input_ids") is { } ids) results.AddRange(VerifyForward(session, c, ids, atol, rtol));
            if (c.Find("split") is { } split) results.Add(VerifySteps(session, c, split, atol, rtol));
            if (c.Find("prompt_ids") is { } prompt) results.Add(VerifyGreedy(session, c, prompt));
        }
        return results;
    }

    private sealed class Case(SafetensorsFile file, string name)
    {
        public string Name => name;
        public TensorSlice? Find(string key) => file.Find($"{name}.{key}");
        public TensorSlice Get(string key) => file.Find($"{name}.{key}")
            ?? throw new XLstmOnnxException($"{file.Path}: case '{name}' has no tensor '{name}.{key}'.");
    }

    private static (int B, int T) Dims2(TensorSlice ids)
    {
        if (ids.Shape.Length != 2) throw new XLstmOnnxException($"{ids.File.Path}: '{ids.Name}' has shape {TensorSlice.FormatShape(ids.Shape)}; expected [B, T].");
        return ((int)ids.Shape[0], (int)ids.Shape[1]);
    }

    private static IEnumerable<CheckResult> VerifyForward(XLstmSession s, Case c, TensorSlice idsSlice, double atol, double rtol)
    {
        var (batch, t) = Dims2(idsSlice);
        var state = s.CreateState(batch);
        var hidden = s.Manifest.HiddenStates && c.Find(GraphNames.Hidden(0)) is not null ? new Dictionary<string, float[]>() : null;
        var logits = s.Run(idsSlice.ToInt64(), t, state, hidden);
        var expected = c.Get("logits");
        long v = s.Manifest.VocabSize;
        ExpectShape(expected, [batch, t, v]);
        var e = expected.ToFloat32();
        if (logits.Positions == t)
        {
            yield return Compare(c.Name, "logits", logits.Values, e, atol, rtol);
        }
        else // a last-position-only model: compare what it returns
        {
            var last = new float[batch * v];
            for (int b = 0; b < batch; b++) e.AsSpan((int)((b * t + t - 1) * v), (int)v).CopyTo(last.AsSpan((int)(b * v)));
            yield return Compare(c.Name, "logits", logits.Values, last, atol, rtol) with { Note = "last position only" };
        }
        if (hidden is not null)
        {
            foreach (var r in CompareHidden(c, hidden, batch, t, s.Manifest.HiddenSize, atol, rtol)) yield return r;
        }
        for (int l = 0; ; l++)
        {
            if (c.Find($"state.{l}.C") is null) break;
            if (l >= s.Manifest.NumLayers)
            {
                throw new XLstmOnnxException($"case '{c.Name}': the reference has states for layer {l}; the model has {s.Manifest.NumLayers} layers.");
            }
            foreach (var part in StateLayout.Parts)
            {
                string name = $"state.{l}.{StateLayout.Name(part)}";
                var ref_ = c.Get(name);
                ExpectShape(ref_, s.Manifest.State.Shape(part, batch));
                yield return Compare(c.Name, name, state[l, part], ref_.ToFloat32(), atol, rtol);
            }
        }
    }

    /// <summary>
    /// The model's hidden_states.K against the reference's, K = 0, 1, ... in order: the same count, each [B, T, H] (a
    /// last-position-only model returns the last one as [B, 1, H]: compared with the reference's last position).
    /// </summary>
    private static IEnumerable<CheckResult> CompareHidden(Case c, Dictionary<string, float[]> hidden, int batch, int t, long h, double atol, double rtol)
    {
        int count = 0;
        while (c.Find(GraphNames.Hidden(count)) is not null) count++;
        if (hidden.Count != count)
        {
            throw new XLstmOnnxException($"case '{c.Name}': the reference has {count} hidden states ({GraphNames.Hidden(0)}..{GraphNames.Hidden(count - 1)}); the model returns {hidden.Count}.");
        }
        for (int k = 0; k < count; k++)
        {
            string name = GraphNames.Hidden(k);
            var reference = c.Get(name);
            ExpectShape(reference, [batch, t, h]);
            var e = reference.ToFloat32();
            var actual = hidden[name];
            if (actual.Length == batch * h && t > 1) // the last one of a last-position-only model
            {
                var last = new float[batch * h];
                for (int b = 0; b < batch; b++) e.AsSpan((int)((b * t + t - 1) * h), (int)h).CopyTo(last.AsSpan((int)(b * h)));
                yield return Compare(c.Name, name, actual, last, atol, rtol) with { Note = "last position only" };
            }
            else
            {
                yield return Compare(c.Name, name, actual, e, atol, rtol);
            }
        }
    }

    private static CheckResult VerifySteps(XLstmSession s, Case c, TensorSlice splitSlice, double atol, double rtol)
    {
        var ids = c.Get("input_ids");
        var (batch, t) = Dims2(ids);
        int split = (int)splitSlice.ToInt64()[0];
        if (split < 1 || split >= t) throw new XLstmOnnxException($"case '{c.Name}': split is {split}; expected 1 <= split < {t}.");
        var all = ids.ToInt64();
        var expected = c.Get("step_logits");
        int v = (int)s.Manifest.VocabSize;
        ExpectShape(expected, [batch, t - split, v]);
        var state = s.CreateState(batch);
        var prefix = new long[batch * split];
        for (int b = 0; b < batch; b++) all.AsSpan(b * t, split).CopyTo(prefix.AsSpan(b * split));
        s.Run(prefix, split, state);
        var actual = new float[batch * (t - split) * v];
        var token = new long[batch];
        for (int j = 0; j < t - split; j++)
        {
            for (int b = 0; b < batch; b++) token[b] = all[b * t + split + j];
            var logits = s.Run(token, 1, state);
            for (int b = 0; b < batch; b++) logits.At(b, logits.Positions - 1).CopyTo(actual.AsSpan((b * (t - split) + j) * v, v));
        }
        return Compare(c.Name, "step_logits", actual, expected.ToFloat32(), atol, rtol) with { Note = $"prefill {split}, then {t - split} steps" };
    }

    private static CheckResult VerifyGreedy(XLstmSession s, Case c, TensorSlice promptSlice)
    {
        var prompt = promptSlice.ToInt64();
        var expected = c.Get("greedy_ids").ToInt64();
        var (batch, p) = Dims2(promptSlice);
        if (batch != 1) throw new XLstmOnnxException($"case '{c.Name}': prompt_ids has batch {batch}; greedy cases have batch 1.");
        if (!expected.AsSpan(0, p).SequenceEqual(prompt)) throw new XLstmOnnxException($"case '{c.Name}': greedy_ids does not start with prompt_ids.");
        var state = s.CreateState(1);
        var got = new List<long>(prompt);
        var logits = s.Run(prompt, p, state);
        while (got.Count < expected.Length)
        {
            long next = Generation.Sampler.ArgMax(logits.At(0, logits.Positions - 1));
            got.Add(next);
            if (got.Count < expected.Length) logits = s.Run([next], 1, state);
        }
        int first = Enumerable.Range(0, expected.Length).FirstOrDefault(i => got[i] != expected[i], -1);
        long different = Enumerable.Range(p, expected.Length - p).Count(i => got[i] != expected[i]);
        // ids are compared exactly: errors are 0, "outside" counts the differing ids
        return new CheckResult(c.Name, "greedy_ids", expected.Length - p, 0, 0, different,
            first < 0 ? $"{expected.Length - p} new tokens equal" : $"first difference at position {first}: expected {expected[first]}, got {got[first]}");
    }

    private static void ExpectShape(TensorSlice t, long[] shape)
    {
        if (!t.Shape.SequenceEqual(shape))
        {
            throw new XLstmOnnxException($"{t.File.Path}: '{t.Name}' has shape {TensorSlice.FormatShape(t.Shape)}; the model implies {TensorSlice.FormatShape(shape)}.");
        }
    }

    /// <summary>
    /// Worst absolute and relative error, the count outside atol + rtol·|expected| (NaN counts), and the relative L2
    /// error ‖actual − expected‖₂ / ‖expected‖₂ (sums in double).
    /// </summary>
    public static CheckResult Compare(string name, string check, ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, double atol, double rtol)
    {
        if (actual.Length != expected.Length)
        {
            throw new XLstmOnnxException($"case '{name}' check '{check}': the model produced {actual.Length} values; the reference has {expected.Length}.");
        }
        double maxAbs = 0, maxRel = 0, diff2 = 0, ref2 = 0;
        long bad = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            double a = actual[i], e = expected[i], d = Math.Abs(a - e);
            ref2 += e * e;
            diff2 += d * d;
            if (double.IsNaN(d)) { bad++; maxAbs = double.NaN; continue; }
            maxAbs = Math.Max(maxAbs, d);
            if (e != 0) maxRel = Math.Max(maxRel, d / Math.Abs(e));
            if (d > atol + rtol * Math.Abs(e)) bad++;
        }
        return new CheckResult(name, check, actual.Length, maxAbs, maxRel, bad) { RelativeL2 = RelL2(diff2, ref2) };
    }

    private static double RelL2(double diff2, double ref2) =>
        double.IsNaN(diff2) ? double.NaN : ref2 > 0 ? Math.Sqrt(diff2 / ref2) : diff2 == 0 ? 0 : double.PositiveInfinity;
}
