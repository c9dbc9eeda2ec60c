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
