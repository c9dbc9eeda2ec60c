namespace XLstmOnnx.Contract;

/// <summary>
/// bfloat16 as its 16 bits and float32, the one conversion of the project: checkpoints (safetensors BF16), exported
/// bf16 weights, and a state stored as bfloat16 (<see cref="StateDtype.Bf16"/>) whose host copies are float32.
/// To bfloat16 rounds to the nearest even, as torch and ONNX's Cast do; a NaN stays a (quiet) NaN.
/// </summary>
public static class BFloat16Bits
{
    /// <summary>The float32 value of bfloat16 bits (exact).</summary>
    public static float ToFloat(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>bfloat16 bits of <paramref name="value"/>, rounded to the nearest even.</summary>
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
}
