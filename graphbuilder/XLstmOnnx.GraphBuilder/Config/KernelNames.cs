namespace XLstmOnnx.GraphBuilder.Config;

/// <summary>Our mLSTM kernel forms. Every HF/mlstm_kernels kernel name maps onto one of them.</summary>
public enum MLstmForm
{
    /// <summary>Chunkwise form over whole chunks of <c>chunk_size</c> (HF's chunkwise and parallel kernels).</summary>
    Chunkwise,
    /// <summary>The recurrent form token by token (HF's sequence kernels, used for the tail of a prompt).</summary>
    Sequence,
    /// <summary>The recurrent form for a single token (HF's step kernels).</summary>
    Step,
}

/// <summary>
/// Maps the kernel names that HF configs carry (<c>chunkwise_kernel</c>, <c>sequence_kernel</c>, <c>step_kernel</c>)
/// to our forms. HF's native path ignores these fields; the external path picks a Triton or torch kernel by name. All of
/// them compute the same mLSTM, so we accept every name mlstm_kernels registers and run our own kernels with HF's
/// native schedule: chunkwise over ⌊S/L⌋·L tokens, the recurrent form for the rest, the step form for S = 1.
/// <c>parallel--*</c> names map to the chunkwise form too: the parallel kernels start from m₀ = −∞ and take no state,
/// which differs from m₀ = 0 only by the eps·e^m term (≈ eps relative) and cannot serve stateful generation.
/// </summary>
public static class KernelNames
{
    /// <summary>Chunkwise-kernel names of mlstm_kernels' registry (HF accepts the native ones without the xlstm package).</summary>
    public static readonly IReadOnlyList<string> Chunkwise =
    [
        "chunkwise--native_autograd", "chunkwise--native_custbw", "chunkwise--triton_limit_chunk",
        "chunkwise--triton_xl_chunk", "chunkwise--triton_xl_chunk_siging",
        "parallel--native_autograd", "parallel--native_custbw", "parallel--native_stablef_autograd",
        "parallel--native_stablef_custbw", "parallel--triton_limit_headdim", "parallel--native_siging_autograd",
        "parallel--native_siging_custbw",
    ];

    /// <summary>Sequence-kernel names.</summary>
    public static readonly IReadOnlyList<string> Sequence = ["native_sequence__native", "native_sequence__triton"];

    /// <summary>Step-kernel names.</summary>
    public static readonly IReadOnlyList<string> Step = ["native", "triton"];

    /// <summary>
    /// The kernel names transformers accepts without the xlstm package (the Literals of its xLSTMConfig for chunkwise_kernel, sequence_kernel and step_kernel):
    /// chunkwise and parallel kernels become their native autograd form, sequence and step kernels the native ones.
    /// </summary>
    public static readonly (IReadOnlyList<string> Chunkwise, string Sequence, string Step) Transformers =
        (["chunkwise--native_autograd", "parallel--native_autograd"], "native_sequence__native", "native");

    /// <summary>
    /// <paramref name="config"/> with the kernel names of <see cref="Transformers"/> (a Triton chunkwise kernel becomes
    /// <c>chunkwise--native_autograd</c>): the same mLSTM, in a config.json that transformers loads.
    /// </summary>
    public static XLstmConfig ForTransformers(XLstmConfig config) => config with
    {
        ChunkwiseKernel = config.ChunkwiseKernel.StartsWith("parallel--", StringComparison.Ordinal) ? Transformers.Chunkwise[1] : Transformers.Chunkwise[0],
        SequenceKernel = Transformers.Sequence,
        StepKernel = Transformers.Step,
    };

    /// <summary>
    /// The "siging" kernels use a sigmoid input gate instead of the exponential one: different math, so we refuse them.
    /// </summary>
    private static bool IsDifferentMath(string name) => name.Contains("siging", StringComparison.Ordinal);

    /// <summary>Checks the three kernel fields and returns the forms they map to; throws naming the field and the known names.</summary>
    public static (MLstmForm Chunkwise, MLstmForm Sequence, MLstmForm Step) Resolve(XLstmConfig config, string source)
    {
        Check("chunkwise_kernel", config.ChunkwiseKernel, Chunkwise, source);
        Check("sequence_kernel", config.SequenceKernel, Sequence, source);
        Check("step_kernel", config.StepKernel, Step, source);
        return (MLstmForm.Chunkwise, MLstmForm.Sequence, MLstmForm.Step);
    }

    private static void Check(string field, string value, IReadOnlyList<string> known, string source)
    {
        if (!known.Contains(value))
        {
            throw new XLstmOnnxException(
                $"{source}: field '{field}' has unknown kernel name \"{value}\". Known: {string.Join(", ", known)}.");
        }
        if (IsDifferentMath(value))
        {
            throw new XLstmOnnxException(
                $"{source}: field '{field}' is \"{value}\", a sigmoid-input-gate variant that HF's xLSTM does not compute; "
                + "expected a kernel with the exponential input gate (e.g. \"chunkwise--native_autograd\").");
        }
    }
}
