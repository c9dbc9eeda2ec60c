using Microsoft.ML.OnnxRuntime;

namespace XLstmOnnx.Runtime;

/// <summary>
/// bfloat16 bits and float32, for state stored as bfloat16 (<c>--state-dtype bf16</c>): the host keeps a state as
/// float32 arrays (snapshots, state files, <see cref="RecurrentState"/>), whose values a bfloat16 state holds exactly;
/// rounding back is to the nearest even, as the custom ops and ONNX's Cast round.
/// </summary>
internal static class Bf16
{
    /// <summary>The float32 value of bfloat16 bits (exact).</summary>
    public static float ToFloat(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>bfloat16 bits of <paramref name="value"/>, rounded to the nearest even; NaN stays a (quiet) NaN.</summary>
    public static ushort FromFloat(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 0x40u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (ushort)(u >> 16);
    }

    public static void ToFloat(ReadOnlySpan<ushort> bits, Span<float> values)
    {
        for (int i = 0; i < bits.Length; i++) values[i] = ToFloat(bits[i]);
    }

    public static void FromFloat(ReadOnlySpan<float> values, Span<ushort> bits)
    {
        for (int i = 0; i < values.Length; i++) bits[i] = FromFloat(values[i]);
    }

    /// <summary>ONNX Runtime's bfloat16 values of <paramref name="values"/> (for host tensors).</summary>
    public static BFloat16[] ToOrt(float[] values)
    {
        var r = new BFloat16[values.Length];
        for (int i = 0; i < values.Length; i++) r[i] = new BFloat16(FromFloat(values[i]));
        return r;
    }

    /// <summary>float32 values of ONNX Runtime's bfloat16 values.</summary>
    public static float[] FromOrt(BFloat16[] values)
    {
        var r = new float[values.Length];
        for (int i = 0; i < values.Length; i++) r[i] = ToFloat(values[i].value);
        return r;
    }
}
