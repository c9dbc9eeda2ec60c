using System.Runtime.InteropServices;
using XLstmOnnx.Contract;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.GraphBuilder.Graph;

/// <summary>float32 values as the little-endian bytes of float32, float16 or bfloat16 (round to nearest even).</summary>
public static class WeightBytes
{
    public static int Size(DataType type) => type == DataType.Float ? 4 : 2;

    /// <summary>Encodes into <paramref name="scratch"/> (at least 4 bytes per value) and returns the bytes written.</summary>
    public static ReadOnlySpan<byte> Encode(ReadOnlySpan<float> values, DataType type, byte[] scratch)
    {
        switch (type)
        {
            case DataType.Float:
                return MemoryMarshal.AsBytes(values);
            case DataType.Float16:
                var h = MemoryMarshal.Cast<byte, Half>(scratch.AsSpan(0, values.Length * 2));
                for (int i = 0; i < values.Length; i++) h[i] = (Half)values[i];
                return scratch.AsSpan(0, values.Length * 2);
            case DataType.Bfloat16:
                var u = MemoryMarshal.Cast<byte, ushort>(scratch.AsSpan(0, values.Length * 2));
                BFloat16Bits.FromFloat(values, u);
                return scratch.AsSpan(0, values.Length * 2);
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "float32, float16 or bfloat16");
        }
    }

    /// <summary>Encodes into a new array.</summary>
    public static byte[] Encode(ReadOnlySpan<float> values, DataType type) => Encode(values, type, new byte[values.Length * 4]).ToArray();
}
