using System.Globalization;
using System.Numerics;
using XLstmOnnx.Contract.Safetensors;

namespace XLstmOnnx.GraphBuilder.Checkpoint;

/// <summary>
/// Where an initializer's values come from. Read a block at a time, as float32, so that exporting a 14 GB checkpoint
/// needs only a block of memory per tensor.
/// </summary>
public interface IWeightSource
{
    /// <summary>Shape of the tensor as the graph sees it.</summary>
    long[] Shape { get; }

    /// <summary>What the values are (checkpoint names), for messages.</summary>
    string Description { get; }

    /// <summary>Writes elements [start, start + dest.Length) in row-major order.</summary>
    void ReadFloat32(long start, Span<float> dest);
}

/// <summary>Helpers over <see cref="IWeightSource"/>.</summary>
public static class WeightSource
{
    public static long ElementCount(this IWeightSource s) => s.Shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>All values (small tensors only).</summary>
    public static float[] ToArray(this IWeightSource s)
    {
        var a = new float[checked((int)s.ElementCount())];
        s.ReadFloat32(0, a);
        return a;
    }
}

/// <summary>One checkpoint tensor, seen with the given shape (same element count).</summary>
public sealed class CheckpointWeight(TensorSlice slice, long[] shape) : IWeightSource
{
    public long[] Shape { get; } = shape;
    public string Description => slice.Name;
    public TensorSlice Slice => slice;
    public void ReadFloat32(long start, Span<float> dest) => slice.ReadFloat32(start, dest);
}

/// <summary>Sources concatenated along dimension 0 (concatenated projections): byte concatenation in row-major order.</summary>
public sealed class ConcatWeight : IWeightSource
{
    private readonly IWeightSource[] _parts;
    private readonly long[] _starts;

    public ConcatWeight(IReadOnlyList<IWeightSource> parts)
    {
        if (parts.Count == 0) throw new ArgumentException("no parts", nameof(parts));
        _parts = [.. parts];
        var rest = parts[0].Shape[1..];
        foreach (var p in parts)
        {
            if (!p.Shape[1..].SequenceEqual(rest)) throw new ArgumentException($"{p.Description}: trailing dims differ from {parts[0].Description}");
        }
        Shape = [parts.Sum(p => p.Shape[0]), .. rest];
        _starts = new long[parts.Count + 1];
        for (int i = 0; i < parts.Count; i++) _starts[i + 1] = _starts[i] + parts[i].ElementCount();
    }

    public long[] Shape { get; }
    public string Description => string.Join(" + ", _parts.Select(p => p.Description));
    /// <summary>The concatenated sources, in order.</summary>
    public IReadOnlyList<IWeightSource> Parts => _parts;

    public void ReadFloat32(long start, Span<float> dest)
    {
        long pos = start;
        int done = 0;
        for (int i = 0; i < _parts.Length && done < dest.Length; i++)
        {
            if (pos >= _starts[i + 1]) continue;
            long local = pos - _starts[i];
            int n = (int)Math.Min(dest.Length - done, _starts[i + 1] - pos);
            _parts[i].ReadFloat32(local, dest.Slice(done, n));
            done += n;
            pos += n;
        }
    }
}

/// <summary>Values given in memory (small constants and tests).</summary>
public sealed class ArrayWeight(string description, long[] shape, float[] values) : IWeightSource
{
    public long[] Shape { get; } = shape;
    public string Description { get; } = description;
    public void ReadFloat32(long start, Span<float> dest) => values.AsSpan((int)start, dest.Length).CopyTo(dest);
}

/// <summary>
/// A source whose every read is checked for NaN and ±Inf, which the export refuses by default (a NaN weight makes every
/// logit NaN, and sampling then returns one id over and over): the error names the tensor, the element's index in the
/// tensor's own shape, and the value. One vectorised pass over each block already read, next to the disk reads.
/// </summary>
public sealed class FiniteWeight : IWeightSource
{
    private readonly IWeightSource _inner;
    private readonly string _tensor;
    private readonly long[] _tensorShape;

    private FiniteWeight(IWeightSource inner, string tensor, long[] tensorShape)
    {
        _inner = inner;
        _tensor = tensor;
        _tensorShape = tensorShape;
    }

    /// <summary><paramref name="source"/> checked, part by part (a checkpoint tensor is named with its file and its own shape).</summary>
    public static IWeightSource Wrap(IWeightSource source) => source switch
    {
        FiniteWeight => source,
        ConcatWeight c => new ConcatWeight([.. c.Parts.Select(Wrap)]),
        CheckpointWeight w => new FiniteWeight(w, $"{w.Slice.File.Path}: tensor '{w.Slice.Name}'", w.Slice.Shape),
        _ => new FiniteWeight(source, $"weight '{source.Description}'", source.Shape),
    };

    public long[] Shape => _inner.Shape;
    public string Description => _inner.Description;

    public void ReadFloat32(long start, Span<float> dest)
    {
        _inner.ReadFloat32(start, dest);
        int at = FirstNonFinite(dest);
        if (at < 0) return;
        long index = start + at;
        float v = dest[at];
        throw new XLstmOnnxException($"{_tensor}: element {FormatIndex(index, _tensorShape)} is {(float.IsNaN(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf")}; "
            + $"the export refuses non-finite weights (ExportOptions.AllowNonFinite exports them anyway).");
    }

    /// <summary>The index of the first NaN or ±Inf in <paramref name="values"/>, or -1.</summary>
    public static int FirstNonFinite(ReadOnlySpan<float> values)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && values.Length >= Vector<float>.Count)
        {
            // x - x is 0 for every finite x and NaN for NaN and ±Inf
            var spans = System.Runtime.InteropServices.MemoryMarshal.Cast<float, Vector<float>>(values);
            for (int k = 0; k < spans.Length; k++)
            {
                var v = spans[k];
                if (!Vector.EqualsAll(v - v, Vector<float>.Zero)) break;
                i += Vector<float>.Count;
            }
        }
        for (; i < values.Length; i++) if (!float.IsFinite(values[i])) return i;
        return -1;
    }

    /// <summary>"[2, 17] (flat 273)" for flat index 273 of shape [4, 128].</summary>
    private static string FormatIndex(long flat, long[] shape)
    {
        var idx = new long[shape.Length];
        long rest = flat;
        for (int d = shape.Length - 1; d >= 0; d--)
        {
            if (shape[d] == 0) return flat.ToString(CultureInfo.InvariantCulture);
            idx[d] = rest % shape[d];
            rest /= shape[d];
        }
        return $"[{string.Join(", ", idx)}] (flat index {flat.ToString(CultureInfo.InvariantCulture)}) of {TensorSlice.FormatShape(shape)}";
    }
}
