using System.Text.Json.Serialization;

namespace XLstmOnnx.Contract;

/// <summary>The type of the weights and activations (<c>dtype</c>): float32, float16 or bfloat16.</summary>
[JsonConverter(typeof(ContractEnumConverter<WeightDtype>))]
public enum WeightDtype
{
    [JsonStringEnumMemberName("fp32")] Fp32,
    [JsonStringEnumMemberName("fp16")] Fp16,
    [JsonStringEnumMemberName("bf16")] Bf16,
}

/// <summary>How the mLSTM cell is emitted (<c>mlstm_kernels</c>).</summary>
[JsonConverter(typeof(ContractEnumConverter<MLstmKernels>))]
public enum MLstmKernels
{
    /// <summary>Standard ONNX ops only (Loop over chunks and tail tokens): portable, needs no custom-op library.</summary>
    [JsonStringEnumMemberName("onnx")] Onnx,
    /// <summary>
    /// One <c>ai.xlstm::MLstmChunkwise</c> node per layer and the fused ops around it (CPU and CUDA kernels in
    /// libxlstm_customops.so, customops/): no control flow in the graph, so CUDA-graph capture works; the runtime must
    /// register the library.
    /// </summary>
    [JsonStringEnumMemberName("custom")] Custom,
}

/// <summary>How the model's projections (y = x Wᵀ + b) are emitted.</summary>
[JsonConverter(typeof(ContractEnumConverter<LinearKernels>))]
public enum LinearKernels
{
    /// <summary>ONNX <c>Gemm</c> (cuBLAS on CUDA, MLAS on the CPU).</summary>
    [JsonStringEnumMemberName("onnx")] Onnx,
    /// <summary>
    /// <c>ai.xlstm::Linear</c>: decode steps run our kernel where it streams the weights faster than cuBLAS (up to 4 rows,
    /// and up to 16 rows for outputs of at most 4,096), other steps and prompts run cuBLAS. Needs <see cref="MLstmKernels.Custom"/>.
    /// </summary>
    [JsonStringEnumMemberName("custom")] Custom,
    /// <summary>
    /// <c>ai.xlstm::Linear</c> with every decode step on our batch-invariant kernels: a sequence decodes to the same
    /// tokens however many others decode beside it (slower than cuBLAS above 16 rows). Needs <see cref="MLstmKernels.Custom"/>.
    /// </summary>
    [JsonStringEnumMemberName("batch-invariant")] BatchInvariant,
}

/// <summary>Which positions the <c>logits</c> output covers (<c>logits</c>).</summary>
[JsonConverter(typeof(ContractEnumConverter<LogitsOutput>))]
public enum LogitsOutput
{
    /// <summary>Every position: [B, S, V].</summary>
    [JsonStringEnumMemberName("all")] All,
    /// <summary>The last position only: [B, 1, V].</summary>
    [JsonStringEnumMemberName("last")] Last,
}

/// <summary>
/// The stored type of the recurrent state's C and n (<c>state_dtype</c>); m is float32 always, and the cell computes in
/// float32 whatever the state is stored in (docs/exported-graph.md, "State").
/// </summary>
[JsonConverter(typeof(ContractEnumConverter<StateDtype>))]
public enum StateDtype
{
    /// <summary>float32 (the default; transformers' own default, <c>inference_state_dtype</c> "float32").</summary>
    [JsonStringEnumMemberName("float32")] Float32,
    /// <summary>bfloat16 C and n: half the bytes a decode step streams per sequence (export <c>--state-dtype bf16</c>).</summary>
    [JsonStringEnumMemberName("bf16")] Bf16,
}

/// <summary>
/// The manifest's enums as JSON strings, by their <see cref="JsonStringEnumMemberNameAttribute"/> names only: case as
/// written, no numbers (a value the runtime does not know is an error naming the field, not a cast).
/// </summary>
public sealed class ContractEnumConverter<TEnum>() : JsonStringEnumConverter<TEnum>(namingPolicy: null, allowIntegerValues: false)
    where TEnum : struct, Enum;

/// <summary>The JSON names of the manifest's enum values, for messages.</summary>
public static class ContractNames
{
    /// <summary>The JSON name of <paramref name="value"/> ("fp16", "custom", "last"), as the manifest writes it.</summary>
    public static string JsonName<TEnum>(this TEnum value) where TEnum : struct, Enum =>
        System.Text.Json.JsonSerializer.Serialize(value, ManifestJson.EnumInfo<TEnum>()).Trim('"');

    /// <summary>Every JSON name of <typeparamref name="TEnum"/>, in declaration order.</summary>
    public static IReadOnlyList<string> JsonNames<TEnum>() where TEnum : struct, Enum =>
        [.. Enum.GetValues<TEnum>().Select(v => v.JsonName())];

    /// <summary>"a", "a or b", "a, b or c": alternatives for a message.</summary>
    public static string Alternatives(IReadOnlyList<string> names) =>
        names.Count <= 1 ? string.Concat(names) : $"{string.Join(", ", names.SkipLast(1))} or {names[^1]}";
}
