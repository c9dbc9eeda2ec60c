using System.Text.Json;
using System.Text.Json.Serialization;
using XLstmOnnx.GraphBuilder.Architecture;
using XLstmOnnx.GraphBuilder.Config;

namespace XLstmOnnx.GraphBuilder.Export;

/// <summary>
/// <c>xlstm_runtime.json</c>: what the runtime needs to drive an exported model without guessing: file names, I/O
/// names and dims, dtypes, kernel form, special tokens and tokenizer files. Written by the exporter beside model.onnx.
/// </summary>
public sealed record ModelManifest
{
    public const string FileName = "xlstm_runtime.json";
    public const int CurrentFormatVersion = 1;

    public int FormatVersion { get; init; } = CurrentFormatVersion;
    public string Producer { get; init; } = "";
    public string ModelFile { get; init; } = "model.onnx";
    public string? ExternalDataFile { get; init; }
    /// <summary>Weight precision ("fp32").</summary>
    public string Dtype { get; init; } = "fp32";
    /// <summary>Quantized projections, e.g. "int4-block32", or null.</summary>
    public string? Quantization { get; init; }
    /// <summary>State precision; always "float32".</summary>
    public string StateDtype { get; init; } = "float32";
    /// <summary>"onnx" (standard ops) or "custom" (needs the custom-op library).</summary>
    [JsonPropertyName("mlstm_kernels")]
    public string MLstmKernels { get; init; } = "onnx";
    /// <summary>The custom-op domain and version the model imports ("ai.xlstm:1") when <see cref="MLstmKernels"/> is "custom".</summary>
    public string? CustomOpDomain { get; init; }
    /// <summary>"input_ids" or "inputs_embeds".</summary>
    public string Input { get; init; } = StateNames.InputIds;
    /// <summary>Whether the model takes <c>attention_mask</c> [B,S] int64.</summary>
    public bool AttentionMask { get; init; }
    /// <summary>"all" ([B,S,V]) or "last" ([B,1,V]).</summary>
    public string Logits { get; init; } = "all";
    public bool HiddenStates { get; init; }
    /// <summary>Whether the model has the <c>next_token</c> output [B,1] int64 (argmax of the last logits).</summary>
    public bool NextToken { get; init; }
    public int NumLayers { get; init; }
    public long NumHeads { get; init; }
    public long QkHeadDim { get; init; }
    public long VHeadDim { get; init; }
    public long VocabSize { get; init; }
    public long HiddenSize { get; init; }
    public long EmbeddingDim { get; init; }
    public long ChunkSize { get; init; }
    public long MaxInferenceChunksize { get; init; }
    public long? BosTokenId { get; init; }
    public long? EosTokenId { get; init; }
    public long? PadTokenId { get; init; }
    /// <summary>The batch sampler for this model's logits (<c>sampler.onnx</c>), or null (models that take embeddings).</summary>
    public string? SamplerFile { get; init; }
    /// <summary>Contract version of <see cref="SamplerFile"/> (SamplerModel.Version); 0 when there is none.</summary>
    public int SamplerVersion { get; init; }
    /// <summary>Tokenizer files copied beside the model (may be empty).</summary>
    public IReadOnlyList<string> TokenizerFiles { get; init; } = [];

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    };

    /// <summary>The manifest of a model exported from <paramref name="c"/> with <paramref name="o"/>.</summary>
    public static ModelManifest For(XLstmConfig c, ExportOptions o, string? externalDataFile, IReadOnlyList<string> tokenizerFiles) => new()
    {
        Producer = $"XLstmOnnx {typeof(ModelManifest).Assembly.GetName().Version}",
        ExternalDataFile = externalDataFile,
        Dtype = o.Dtype,
        Quantization = o.QuantizeBits is { } bits ? $"int{bits}-block{o.QuantizeBlockSize}" : null,
        MLstmKernels = o.MLstmKernels.ToString().ToLowerInvariant(),
        CustomOpDomain = o.MLstmKernels == Export.MLstmKernels.Custom ? $"{CustomOps.Domain}:{CustomOps.DomainVersion}" : null,
        Input = o.InputsEmbeds ? StateNames.InputsEmbeds : StateNames.InputIds,
        AttentionMask = o.AttentionMask,
        Logits = o.LastLogitsOnly ? "last" : "all",
        HiddenStates = o.HiddenStates,
        NextToken = o.NextToken,
        NumLayers = checked((int)c.NumBlocks),
        NumHeads = c.NumHeads,
        QkHeadDim = c.QkHeadDim,
        VHeadDim = c.VHeadDim,
        VocabSize = c.VocabSize,
        HiddenSize = c.HiddenSize,
        EmbeddingDim = c.EmbeddingDim,
        ChunkSize = c.ChunkSize,
        MaxInferenceChunksize = c.MaxInferenceChunksize,
        BosTokenId = c.BosTokenId,
        EosTokenId = c.EosTokenId,
        PadTokenId = c.PadTokenId,
        TokenizerFiles = tokenizerFiles,
    };

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    /// <summary>Reads <c>xlstm_runtime.json</c> from <paramref name="modelDir"/>; throws naming the file and field.</summary>
    public static ModelManifest Load(string modelDir)
    {
        string path = Path.Combine(modelDir, FileName);
        if (!File.Exists(path))
        {
            throw new XLstmOnnxException($"{modelDir}: not an exported model: {FileName} is missing (run 'xlstm-onnx export' first).");
        }
        ModelManifest? m;
        try
        {
            m = JsonSerializer.Deserialize<ModelManifest>(File.ReadAllText(path), Json);
        }
        catch (JsonException e)
        {
            throw new XLstmOnnxException($"{path}: invalid manifest JSON ({e.Message}).", e);
        }
        if (m is null) throw new XLstmOnnxException($"{path}: empty manifest.");
        if (m.FormatVersion != CurrentFormatVersion)
        {
            throw new XLstmOnnxException($"{path}: field 'format_version' is {m.FormatVersion}; this version reads {CurrentFormatVersion}. Re-export the model.");
        }
        return m;
    }

    /// <summary>The state shape of one part ("C", "n" or "m") for <paramref name="batch"/> sequences.</summary>
    public long[] StateShape(string part, long batch) => part switch
    {
        "C" => [batch, NumHeads, QkHeadDim, VHeadDim],
        "n" => [batch, NumHeads, QkHeadDim],
        "m" => [batch, NumHeads, 1],
        _ => throw new ArgumentOutOfRangeException(nameof(part), part, "expected C, n or m"),
    };
}
