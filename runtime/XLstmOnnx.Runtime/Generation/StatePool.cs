using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using XLstmOnnx.Contract;

namespace XLstmOnnx.Runtime.Generation;

/// <summary>
/// The recurrent state of a fixed number of rows (sequences), in the model's device memory, in one or two buffer sets
/// (two: a call reads one set as past_state and writes the other as present_state; a buffer is never input and output
/// of one call). The only owner of state memory.
/// <para>
/// Layout of one set: for each layer, its C block [Rows, NH, DQK, DV], then n [Rows, NH, DQK], then m [Rows, NH, 1], each
/// block 256-byte aligned, every layer the same size; C and n in the manifest's state dtype (float32 or bfloat16), m
/// float32. Host copies (<see cref="Read"/>, <see cref="Write"/>) are float32 whatever the stored type. So a run of rows of one tensor is contiguous (a tensor view over
/// rows [start, start + count) is a plain sub-range, the same address for every batch size that starts at row 0), and one
/// row of one part over all layers is a strided copy: moving a row is three copies, whatever the depth.
/// </para>
/// Which set holds a row's current state is the caller's to track (its parity); every copy below names it.
/// </summary>
internal sealed class StatePool : IDisposable
{
    private const int Align = 256;
    private readonly DeviceMemory _memory;
    private readonly DeviceAllocation[] _sets;
    private readonly int _layers;
    private readonly long[] _partOffset = new long[StateLayout.PartsPerLayer];   // within a layer
    private readonly long[] _rowBytes = new long[StateLayout.PartsPerLayer];     // per part
    private readonly bool[] _bf16 = new bool[StateLayout.PartsPerLayer];         // per part: stored as bfloat16
    private readonly long[][] _rowShape = new long[StateLayout.PartsPerLayer][];  // per part, without the batch axis
    private readonly long _layerStride;

    public StatePool(ModelManifest manifest, DeviceMemory memory, int rows, int sets, string what)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        if (sets is not (1 or 2)) throw new ArgumentOutOfRangeException(nameof(sets), sets, "one or two buffer sets");
        _memory = memory;
        _layers = manifest.NumLayers;
        Rows = rows;
        long offset = 0;
        for (int p = 0; p < StateLayout.PartsPerLayer; p++)
        {
            _rowShape[p] = manifest.State.RowShape((StatePart)p);
            _bf16[p] = StateLayout.IsBf16((StatePart)p, manifest.StateDtype);
            _rowBytes[p] = _rowShape[p].Aggregate(1L, (a, b) => a * b) * StateLayout.ElementBytes((StatePart)p, manifest.StateDtype);
            _partOffset[p] = offset;
            offset += AlignUp(_rowBytes[p] * rows);
        }
        _layerStride = offset;
        _sets = new DeviceAllocation[sets];
        try
        {
            for (int s = 0; s < sets; s++) _sets[s] = memory.Allocate(_layerStride * _layers, what);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public int Rows { get; }

    /// <summary>Buffer sets: 2 (double-buffered) or 1 (storage, e.g. the prefix cache).</summary>
    public int Sets => _sets.Length;

    /// <summary>Tensors per set: every layer's C, n and m, layer-major (the graph's past_state order).</summary>
    public int TensorCount => _layers * StateLayout.PartsPerLayer;

    /// <summary>Bytes of one row's state (every layer's C, n, m).</summary>
    public long RowBytes => _rowBytes.Sum() * _layers;

    /// <summary>Bytes of a pool of <paramref name="rows"/> rows and <paramref name="sets"/> sets for <paramref name="manifest"/>'s model.</summary>
    public static long BytesFor(ModelManifest manifest, int rows, int sets)
    {
        long stride = 0;
        foreach (var part in StateLayout.Parts) stride += AlignUp(manifest.State.Elements(part, rows) * StateLayout.ElementBytes(part, manifest.StateDtype));
        return stride * manifest.NumLayers * sets;
    }

    /// <summary>Bytes of one row's state of <paramref name="manifest"/>'s model.</summary>
    public static long RowBytesFor(ModelManifest manifest) => manifest.State.RowBytesAs(manifest.StateDtype);

    /// <summary>The shape of tensor <paramref name="i"/> (<see cref="StateLayout"/>'s layer-major order) for <paramref name="rows"/> rows.</summary>
    public long[] Shape(int i, long rows) => [rows, .. _rowShape[PartOf(i)]];

    private IntPtr At(int set, int tensor, int row) =>
        _sets[set].Address + (nint)(StateLayout.LayerOf(tensor) * _layerStride + _partOffset[PartOf(tensor)] + row * _rowBytes[PartOf(tensor)]);

    private static int PartOf(int tensor) => (int)StateLayout.PartOf(tensor);

    /// <summary>
    /// Tensor views of rows [<paramref name="start"/>, start + <paramref name="count"/>) of set <paramref name="set"/>, in
    /// past_state order; the caller disposes them (they own no memory).
    /// </summary>
    public OrtValue[] Views(int set, int start, int count)
    {
        CheckRows(start, count);
        var views = new OrtValue[TensorCount];
        for (int i = 0; i < views.Length; i++)
        {
            var type = _bf16[PartOf(i)] ? TensorElementType.BFloat16 : TensorElementType.Float;
            views[i] = _memory.View(At(set, i, start), type, Shape(i, count), _rowBytes[PartOf(i)] * count);
        }
        return views;
    }

    /// <summary>Zeros ("start": m = 0 as HF's cache) rows [start, start + count) of set <paramref name="set"/>.</summary>
    public void Zero(int set, int start, int count)
    {
        CheckRows(start, count);
        for (int p = 0; p < StateLayout.PartsPerLayer; p++) _memory.Zero2D(At(set, p, start), _layerStride, _rowBytes[p] * count, _layers);
        _memory.Wait();
    }

    /// <summary>Copies row <paramref name="row"/> of set <paramref name="set"/> to row <paramref name="toRow"/> of set <paramref name="toSet"/> of <paramref name="to"/> (a pool of the same model).</summary>
    public void CopyRow(int set, int row, StatePool to, int toSet, int toRow)
    {
        CheckRows(row, 1);
        to.CheckRows(toRow, 1);
        if (to._layers != _layers || !to._rowBytes.SequenceEqual(_rowBytes)) throw new ArgumentException("the pools belong to different models", nameof(to));
        for (int p = 0; p < StateLayout.PartsPerLayer; p++) _memory.Copy2D(to.At(toSet, p, toRow), to._layerStride, At(set, p, row), _layerStride, _rowBytes[p], _layers);
        _memory.Wait();
    }

    /// <summary>Rows [start, start + count) of set <paramref name="set"/> in host memory: one array per tensor, rows concatenated.</summary>
    public float[][] Read(int set, int start, int count)
    {
        CheckRows(start, count);
        var tensors = new float[TensorCount][];
        for (int i = 0; i < tensors.Length; i++)
        {
            tensors[i] = new float[Values(i) * count];
            ReadTensor(set, i, start, tensors[i]);
        }
        return tensors;
    }

    /// <summary>Writes host tensors (as from <see cref="Read"/>) into rows starting at <paramref name="start"/> of set <paramref name="set"/>.</summary>
    public void Write(int set, int start, IReadOnlyList<float[]> tensors)
    {
        if (tensors.Count != TensorCount) throw new ArgumentException($"expected {TensorCount} state tensors; got {tensors.Count}", nameof(tensors));
        int count = (int)(tensors[0].LongLength / Values(0));
        for (int i = 0; i < tensors.Count; i++)
        {
            long expected = Values(i) * count;
            if (tensors[i].LongLength != expected) throw new ArgumentException($"state tensor {i} has {tensors[i].LongLength} values; {count} rows have {expected}", nameof(tensors));
            WriteTensor(set, i, start, tensors[i]);
        }
    }

    /// <summary>
    /// Tensor <paramref name="tensor"/> of rows [start, start + n) of set <paramref name="set"/> into <paramref name="dest"/>
    /// as float32, n = dest's length over the values of a row (no host array of its own: a state handed between
    /// replicas lands in place in the file that carries it).
    /// </summary>
    public void ReadTensor(int set, int tensor, int start, Span<float> dest)
    {
        int count = RowsIn(tensor, dest.Length, nameof(dest));
        CheckRows(start, count);
        if (_bf16[PartOf(tensor)])
        {
            var bits = new ushort[dest.Length];
            _memory.Download<ushort>(At(set, tensor, start), bits);
            BFloat16Bits.ToFloat(bits, dest);
        }
        else
        {
            _memory.Download(At(set, tensor, start), dest);
        }
    }

    /// <summary>Float32 values of tensor <paramref name="tensor"/> (whole rows) into rows starting at <paramref name="start"/> of set <paramref name="set"/>.</summary>
    public void WriteTensor(int set, int tensor, int start, ReadOnlySpan<float> values)
    {
        int count = RowsIn(tensor, values.Length, nameof(values));
        CheckRows(start, count);
        if (_bf16[PartOf(tensor)])
        {
            var bits = new ushort[values.Length];
            BFloat16Bits.FromFloat(values, bits);  // rounded to the nearest even: a state read from this pool comes back exact
            _memory.Upload<ushort>(bits, At(set, tensor, start));
        }
        else
        {
            _memory.Upload(values, At(set, tensor, start));
        }
    }

    /// <summary>Rows that <paramref name="values"/> values of tensor <paramref name="tensor"/> make; throws unless whole rows.</summary>
    private int RowsIn(int tensor, long values, string name)
    {
        if (tensor < 0 || tensor >= TensorCount) throw new ArgumentOutOfRangeException(nameof(tensor), tensor, $"a state tensor index below {TensorCount}");
        long row = Values(tensor);
        if (values == 0 || values % row != 0) throw new ArgumentException($"state tensor {tensor}: {values} values are not whole rows of {row}", name);
        return (int)(values / row);
    }

    /// <summary>Values of one row of tensor <paramref name="i"/>.</summary>
    private long Values(int i) => _rowBytes[PartOf(i)] / (_bf16[PartOf(i)] ? 2 : sizeof(float));

    private void CheckRows(int start, int count)
    {
        if (start < 0 || count < 1 || start + count > Rows) throw new ArgumentOutOfRangeException(nameof(start), $"rows [{start}, {start + count}) of a pool of {Rows}");
    }

    private static long AlignUp(long bytes) => (bytes + Align - 1) / Align * Align;

    public void Dispose()
    {
        foreach (var s in _sets) s?.Dispose();
    }
}
