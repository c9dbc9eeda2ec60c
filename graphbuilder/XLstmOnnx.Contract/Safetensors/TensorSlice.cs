using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace XLstmOnnx.Contract.Safetensors;

/// <summary>
/// A lazy view of one tensor in a memory-mapped safetensors file. Values are converted to float32 only when read,
/// a block at a time, so that no whole checkpoint (and no whole large tensor) is ever held in memory.
/// </summary>
public sealed class TensorSlice
{
    internal TensorSlice(SafetensorsFile file, string name, SafetensorsDtype dtype, long[] shape, long offset, long byteLength)
    {
        File = file;
        Name = name;
        Dtype = dtype;
        Shape = shape;
        Offset = offset;
        ByteLength = byteLength;
    }

    public SafetensorsFile File { get; }
    public string Name { get; }
    public SafetensorsDtype Dtype { get; }
    public long[] Shape { get; }
    /// <summary>Byte offset inside the file's data section.</summary>
    public long Offset { get; }
    public long ByteLength { get; }
    public long ElementCount => ByteLength / Dtype.Size();

    /// <summary>The tensor's bytes in place (little-endian, no copy), while its file is open.</summary>
    public ReadOnlySpan<byte> RawBytes => File.Bytes(Offset, checked((int)ByteLength));

    /// <summary>Where the tensor's bytes start in the whole file (its header included).</summary>
    public long FileOffset => File.DataStart + Offset;

    /// <summary>Converts elements [start, start + dest.Length) to float32. Weight dtypes only.</summary>
    public void ReadFloat32(long start, Span<float> dest)
    {
        if (!Dtype.IsWeightType())
        {
            throw new XLstmOnnxException($"{File.Path}: tensor '{Name}' has dtype {Dtype}; expected F32, F16 or BF16.");
        }
        if (start < 0 || start + dest.Length > ElementCount) throw new ArgumentOutOfRangeException(nameof(start));
        int size = Dtype.Size();
        var src = File.Bytes(Offset + start * size, dest.Length * size);
        switch (Dtype)
        {
            case SafetensorsDtype.F32:
                MemoryMarshal.Cast<byte, float>(src).CopyTo(dest); // little-endian hosts only (x64, arm64)
                break;
            case SafetensorsDtype.F16:
                var halves = MemoryMarshal.Cast<byte, Half>(src);
                for (int i = 0; i < dest.Length; i++) dest[i] = (float)halves[i];
                break;
            case SafetensorsDtype.BF16:
                var raw = MemoryMarshal.Cast<byte, ushort>(src);
                BFloat16Bits.ToFloat(raw, dest);
                break;
        }
    }

    /// <summary>All values as float32 (for small tensors: reference files, norms, tests).</summary>
    public float[] ToFloat32()
    {
        var result = new float[checked((int)ElementCount)];
        ReadFloat32(0, result);
        return result;
    }

    /// <summary>All values of an I64 tensor.</summary>
    public long[] ToInt64()
    {
        if (Dtype != SafetensorsDtype.I64)
        {
            throw new XLstmOnnxException($"{File.Path}: tensor '{Name}' has dtype {Dtype}; expected I64.");
        }
        var src = File.Bytes(Offset, checked((int)ByteLength));
        var result = new long[ElementCount];
        for (int i = 0; i < result.Length; i++) result[i] = BinaryPrimitives.ReadInt64LittleEndian(src.Slice(i * 8, 8));
        return result;
    }

    public override string ToString() => $"{Name} {Dtype}{FormatShape(Shape)}";

    /// <summary>A shape as messages write it: [2, 3, 4].</summary>
    public static string FormatShape(IEnumerable<long> shape) => $"[{string.Join(", ", shape)}]";
}
