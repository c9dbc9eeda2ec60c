using XLstmOnnx.Contract;

namespace XLstmOnnx.GraphBuilder.Export;

/// <summary>Where initializer bytes go.</summary>
public enum ExternalDataMode
{
    /// <summary>External when the weights exceed <see cref="ExportOptions.ExternalDataThresholdBytes"/>.</summary>
    Auto,
    /// <summary>Always one model.onnx.data file beside model.onnx.</summary>
    Always,
    /// <summary>Always inside model.onnx (fails above protobuf's 2 GB limit).</summary>
    Never,
}

/// <summary>Options of one export. Defaults give the full-logits, input_ids, fp32 model.</summary>
public sealed record ExportOptions
{
    /// <summary>
    /// Weights and activations. Gate pre-activations, the mLSTM state and stabilizer, norm statistics and logits are
    /// float32 whatever this is (HF computes gates in the model dtype; we keep them exact).
    /// </summary>
    public WeightDtype Dtype { get; init; } = WeightDtype.Fp32;
    /// <summary>
    /// 4 to store the large projections (q/k/v/o, out_proj, FFN, lm_head) as 4-bit blocks for com.microsoft::MatMulNBits;
    /// null keeps them in <see cref="Dtype"/>. Embeddings, gates and norms are never quantized.
    /// </summary>
    public int? QuantizeBits { get; init; }
    /// <summary>Inputs per 4-bit block (one scale and zero point each): one of <see cref="QuantizeBlockSizes"/>.</summary>
    public int QuantizeBlockSize { get; init; } = 32;
    /// <summary>Emit logits for the last position only ([B, 1, V]); what decoding needs.</summary>
    public bool LastLogitsOnly { get; init; }
    /// <summary>
    /// Add a <c>next_token</c> output [B, 1] int64: the argmax of the last logits, computed where the model runs, so a
    /// greedy decode step copies B ids back instead of B·V logits. Needs <see cref="LastLogitsOnly"/>.
    /// </summary>
    public bool NextToken { get; init; }
    /// <summary>Take <c>inputs_embeds</c> [B, S, E] instead of <c>input_ids</c>.</summary>
    public bool InputsEmbeds { get; init; }
    /// <summary>
    /// Add an <c>attention_mask</c> input [B, S] (1 real, 0 padding). Padded positions leave the state untouched, so
    /// left-padded prompts of different lengths batch exactly. HF has no such input (its pads advance the state).
    /// </summary>
    public bool AttentionMask { get; init; } = true;
    /// <summary>Add <c>hidden_states.{i}</c> outputs in transformers' order: the embedding output, the outputs of blocks 0..N-2, then the final normed output.</summary>
    public bool HiddenStates { get; init; }
    public ExternalDataMode ExternalData { get; init; } = ExternalDataMode.Auto;
    /// <summary>Weights above this many bytes go to external data in <see cref="ExternalDataMode.Auto"/>; well under protobuf's 2 GiB.</summary>
    public long ExternalDataThresholdBytes { get; init; } = 1L << 30;
    public MLstmKernels MLstmKernels { get; init; } = MLstmKernels.Onnx;
    /// <summary>
    /// Export weights that hold NaN or ±Inf. By default every weight is checked as it is written and the export refuses
    /// the first non-finite value, naming the tensor and the index (such a model returns NaN logits).
    /// </summary>
    public bool AllowNonFinite { get; init; }

    /// <summary>
    /// The block sizes com.microsoft::MatMulNBits accepts: ONNX Runtime 1.31's schema says "a power of two and at least 16",
    /// and its CPU kernel refuses a model with block_size 512 or 1024 at load (matmul_nbits.cc), so 256 is the top.
    /// </summary>
    public static readonly IReadOnlyList<int> QuantizeBlockSizes = [16, 32, 64, 128, 256];

    /// <summary>
    /// The projections' op; null is <see cref="DefaultLinear"/>. <see cref="LinearKernels.BatchInvariant"/> decodes 12% slower
    /// at batch 32 and 24% at 64 (tools/serve/results/run4): it is for those who need a sequence's tokens not to depend on its batch.
    /// </summary>
    public LinearKernels? LinearKernels { get; init; }

    /// <summary>
    /// The projections' op when none is asked for: <see cref="LinearKernels.Custom"/> for a float16 or bfloat16 export with the
    /// custom cell and no quantization, <see cref="LinearKernels.Onnx"/> (Gemm) otherwise. On the H200 at xLSTM-7b the custom
    /// export decodes 2.5% faster than Gemm at batch 1 and 3.1% at 16 and the same above (our kernel streams the weights faster
    /// where cuBLAS splits K or leaves SMs idle; tools/bench/results/roofline-h200-2026-11-30).
    /// </summary>
    public LinearKernels DefaultLinear =>
        MLstmKernels == MLstmKernels.Custom && Dtype != WeightDtype.Fp32 && QuantizeBits is null ? Contract.LinearKernels.Custom : Contract.LinearKernels.Onnx;

    /// <summary>
    /// The stored type of the state's C and n (graph inputs and outputs, pools, caches); m stays float32 and the cell
    /// computes in float32 either way. <see cref="StateDtype.Bf16"/> halves the bytes a decode step streams per sequence.
    /// </summary>
    public StateDtype StateDtype { get; init; } = StateDtype.Float32;

    /// <summary>
    /// Also write model.mixed.onnx, the mixed graph (docs/exported-graph.md, "The mixed graph"): a decode step of B rows
    /// and a prompt piece of P rows in one call, whose projections stream the weights once for both. It reads the same
    /// weights file; the serving engine uses it to read prompts inside decode steps. Needs <see cref="MLstmKernels"/> custom,
    /// <see cref="AttentionMask"/>, <c>input_ids</c> and no hidden states.
    /// </summary>
    public bool MixedGraph { get; init; }

    /// <summary>What <see cref="LinearKernels"/> resolves to for these options.</summary>
    public LinearKernels Linear => LinearKernels ?? DefaultLinear;

    /// <summary>The ai.onnx opset we emit (23: RMSNormalization). ONNX Runtime 1.31 loads up to 26.</summary>
    public const int Opset = 23;
    /// <summary>IR version matching opset 23.</summary>
    public const int IrVersion = 11;

    /// <summary>Checks the options; throws naming the parameter (<c>ExportOptions.Dtype</c>), expected and found.</summary>
    public void Validate()
    {
        if (!Enum.IsDefined(Dtype)) throw XLstmOnnxException.MustBe(Name(nameof(Dtype)), ContractNames.Alternatives(ContractNames.JsonNames<WeightDtype>()), (int)Dtype);
        if (!Enum.IsDefined(MLstmKernels))
        {
            throw XLstmOnnxException.MustBe(Name(nameof(MLstmKernels)), ContractNames.Alternatives(ContractNames.JsonNames<MLstmKernels>()), (int)MLstmKernels);
        }
        if (LinearKernels is { } linear && !Enum.IsDefined(linear))
        {
            throw XLstmOnnxException.MustBe(Name(nameof(LinearKernels)), ContractNames.Alternatives(ContractNames.JsonNames<LinearKernels>()), (int)linear);
        }
        if (LinearKernels is { } custom && custom != Contract.LinearKernels.Onnx && MLstmKernels != MLstmKernels.Custom)
        {
            throw XLstmOnnxException.InParameter(Name(nameof(LinearKernels)),
                $"{Name(nameof(LinearKernels))} {custom.JsonName()} needs {Name(nameof(MLstmKernels))} custom (the op is in the same library); found {MLstmKernels.JsonName()}.");
        }
        if (!Enum.IsDefined(StateDtype))
        {
            throw XLstmOnnxException.MustBe(Name(nameof(StateDtype)), ContractNames.Alternatives(ContractNames.JsonNames<StateDtype>()), (int)StateDtype);
        }
        if (!Enum.IsDefined(ExternalData)) throw XLstmOnnxException.MustBe(Name(nameof(ExternalData)), "Auto, Always or Never", (int)ExternalData);
        if (QuantizeBits is { } bits && bits != 4) throw XLstmOnnxException.MustBe(Name(nameof(QuantizeBits)), "4 or null", bits);
        if (!QuantizeBlockSizes.Contains(QuantizeBlockSize))
        {
            throw XLstmOnnxException.MustBe(Name(nameof(QuantizeBlockSize)), $"one of {string.Join(", ", QuantizeBlockSizes)} (the block sizes ONNX Runtime's MatMulNBits loads)", QuantizeBlockSize);
        }
        if (NextToken && !LastLogitsOnly)
        {
            throw XLstmOnnxException.InParameter(Name(nameof(NextToken)),
                $"{Name(nameof(NextToken))} needs {Name(nameof(LastLogitsOnly))} (it is the argmax of the last position's logits).");
        }
        if (MixedGraph)
        {
            string need = MLstmKernels != MLstmKernels.Custom ? $"{Name(nameof(MLstmKernels))} custom (found {MLstmKernels.JsonName()})"
                : !AttentionMask ? $"{Name(nameof(AttentionMask))} (found false)"
                : InputsEmbeds ? $"input_ids (found {Name(nameof(InputsEmbeds))} true)"
                : HiddenStates ? $"no hidden states (found {Name(nameof(HiddenStates))} true)"
                : "";
            if (need.Length > 0) throw XLstmOnnxException.InParameter(Name(nameof(MixedGraph)), $"{Name(nameof(MixedGraph))} needs {need}.");
        }
        if (ExternalDataThresholdBytes <= 0) throw XLstmOnnxException.MustBe(Name(nameof(ExternalDataThresholdBytes)), "positive", ExternalDataThresholdBytes);
    }

    /// <summary>The API name of property <paramref name="property"/>, as errors give it: <c>ExportOptions.Dtype</c>.</summary>
    public static string Name(string property) => $"{nameof(ExportOptions)}.{property}";
}
