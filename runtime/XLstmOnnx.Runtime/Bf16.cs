using Microsoft.ML.OnnxRuntime;
using XLstmOnnx.Contract;

namespace XLstmOnnx.Runtime;

/// <summary>
/// A state stored as bfloat16 (<c>--state-dtype bf16</c>) in host tensors: the host keeps float32 arrays
/// (<see cref="RecurrentState"/>), which a bfloat16 state holds exactly; the bits are <see cref="BFloat16Bits"/>'s.
/// </summary>
internal static class Bf16
{
    /// <summary>ONNX Runtime's bfloat16 values of <paramref name="values"/>.</summary>
    public static BFloat16[] ToOrt(float[] values)
    {
        var r = new BFloat16[values.Length];
        for (int i = 0; i < values.Length; i++) r[i] = new BFloat16(BFloat16Bits.FromFloat(values[i]));
        return r;
    }

    /// <summary>float32 values of ONNX Runtime's bfloat16 values.</summary>
    public static float[] FromOrt(BFloat16[] values)
    {
        var r = new float[values.Length];
        for (int i = 0; i < values.Length; i++) r[i] = BFloat16Bits.ToFloat(values[i].value);
        return r;
    }
}
