using System.Reflection;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace XLstmOnnx.Contract;

/// <summary>
/// <c>xlstm_runtime.json</c>: what the runtime needs to drive an exported model without guessing: file names, I/O
/// names and dims, dtypes, kernel form, special tokens and tokenizer files. Written by the exporter beside model.onnx.
/// Each field is named once, by its property: the JSON name is the property's in snake case (<see cref="Field"/>).
/// </summary>
public sealed record ModelManifest
{
    public const string FileName = "xlstm_runtime.json";
    public const int CurrentFormatVersion = 1;

    public int FormatVersion { get; init; } = CurrentFormatVersion;
    public string Producer { get; init; } = "";
    public string ModelFile { get; init; } = "model.onnx";
    public string? ExternalDataFile { get; init; }
    /// <summary>
    /// The mixed graph (a decode step and a prompt piece in one call, <see cref="GraphNames.PromptPrefix"/>), beside
    /// <see cref="ModelFile"/> and reading the same weights; null when it was not exported.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] // absent, not null, in manifests without one (older ones read the same)
    public string? MixedModelFile { get; init; }
    /// <summary>Weight and activation precision.</summary>
    public WeightDtype Dtype { get; init; } = WeightDtype.Fp32;
    /// <summary>Quantized projections, e.g. "int4-block32", or null.</summary>
    public string? Quantization { get; init; }
    /// <summary>State precision; always float32.</summary>
    public StateDtype StateDtype { get; init; } = StateDtype.Float32;
    /// <summary>Standard ops, or the custom ops (needs the custom-op library).</summary>
    [JsonPropertyName("mlstm_kernels")]
    public MLstmKernels MLstmKernels { get; init; } = MLstmKernels.Onnx;
    /// <summary>The custom-op domain and version the model imports ("ai.xlstm:1") when <see cref="MLstmKernels"/> is custom.</summary>
    public string? CustomOpDomain { get; init; }
    /// <summary><see cref="GraphNames.InputIds"/> or <see cref="GraphNames.InputsEmbeds"/>.</summary>
    public string Input { get; init; } = GraphNames.InputIds;
    /// <summary>Whether the model takes <c>attention_mask</c> [B,S] int64.</summary>
    public bool AttentionMask { get; init; }
    /// <summary>Every position's logits ([B,S,V]) or the last one's ([B,1,V]).</summary>
    public LogitsOutput Logits { get; init; } = LogitsOutput.All;
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
    /// <summary>The batch sampler for this model's logits (<see cref="SamplerModel.FileName"/>), or null (models that take embeddings).</summary>
    public string? SamplerFile { get; init; }
    /// <summary>Contract version of <see cref="SamplerFile"/> (<see cref="SamplerModel.Version"/>); 0 when there is none.</summary>
    public int SamplerVersion { get; init; }
    /// <summary>Tokenizer files copied beside the model (may be empty).</summary>
    public IReadOnlyList<string> TokenizerFiles { get; init; } = [];

    /// <summary>The recurrent state's names, shapes and order, from the dims above.</summary>
    [JsonIgnore]
    public StateLayout State => new(NumLayers, NumHeads, QkHeadDim, VHeadDim);

    /// <summary>The JSON name of property <paramref name="property"/> (give it as <c>nameof</c>), for messages.</summary>
    public static string Field(string property) =>
        ManifestJson.Default.ModelManifest.Properties.FirstOrDefault(p => (p.AttributeProvider as MemberInfo)?.Name == property)?.Name
        ?? throw new ArgumentOutOfRangeException(nameof(property), property, "not a field of the manifest");

    public string ToJson() => JsonSerializer.Serialize(this, ManifestJson.Default.ModelManifest);

    /// <summary>Reads <c>xlstm_runtime.json</c> from <paramref name="modelDir"/>; throws naming the file and field.</summary>
    public static ModelManifest Load(string modelDir)
    {
        string path = Path.Combine(modelDir, FileName);
        if (!File.Exists(path))
        {
            throw new XLstmOnnxException($"{modelDir}: not an exported model: {FileName} is missing (run 'xlstm-onnx export' first).");
        }
        string json = File.ReadAllText(path);
        ModelManifest? m;
        try
        {
            m = JsonSerializer.Deserialize(json, ManifestJson.Default.ModelManifest);
        }
        catch (JsonException e)
        {
            throw new XLstmOnnxException($"{path}: {BadValue(json, e) ?? $"invalid manifest JSON ({e.Message})"}.", e);
        }
        catch (InvalidOperationException e) // a string JSON cannot decode (a lone surrogate)
        {
            throw new XLstmOnnxException($"{path}: invalid manifest JSON ({e.Message}).", e);
        }
        if (m is null) throw new XLstmOnnxException($"{path}: empty manifest.");
        if (m.FormatVersion != CurrentFormatVersion)
        {
            throw new XLstmOnnxException($"{path}: field '{Field(nameof(FormatVersion))}' is {m.FormatVersion}; this version reads {CurrentFormatVersion}. Re-export the model.");
        }
        m.Check(path);
        return m;
    }

    /// <summary>
    /// Checks what JSON types cannot: every file the manifest names lies in the model folder (a plain file name, as the
    /// exporter writes it; never a path out of the folder), and every size is positive. Throws naming the field.
    /// </summary>
    private void Check(string path)
    {
        void FileName(string field, string? name, bool required)
        {
            if (name is null)
            {
                if (required) throw new XLstmOnnxException($"{path}: field '{field}' is null; expected a file name in the model folder.");
                return;
            }
            if (name.Length == 0 || name is "." or ".." || name.IndexOfAny(['/', '\\', '\0']) >= 0 || System.IO.Path.IsPathRooted(name))
            {
                throw new XLstmOnnxException($"{path}: field '{field}' is \"{name}\"; expected a file name in the model folder (no folders, nothing outside it).");
            }
        }
        FileName(Field(nameof(ModelFile)), ModelFile, required: true);
        FileName(Field(nameof(ExternalDataFile)), ExternalDataFile, required: false);
        FileName(Field(nameof(SamplerFile)), SamplerFile, required: false);
        FileName(Field(nameof(MixedModelFile)), MixedModelFile, required: false);
        if (TokenizerFiles is null) throw new XLstmOnnxException($"{path}: field '{Field(nameof(TokenizerFiles))}' is null; expected a list of file names.");
        foreach (var t in TokenizerFiles) FileName(Field(nameof(TokenizerFiles)), t, required: true);
        foreach (var (field, value) in new[]
        {
            (nameof(NumLayers), (long)NumLayers), (nameof(NumHeads), NumHeads), (nameof(QkHeadDim), QkHeadDim), (nameof(VHeadDim), VHeadDim),
            (nameof(VocabSize), VocabSize), (nameof(HiddenSize), HiddenSize), (nameof(EmbeddingDim), EmbeddingDim),
            (nameof(ChunkSize), ChunkSize), (nameof(MaxInferenceChunksize), MaxInferenceChunksize),
        })
        {
            if (value <= 0) throw new XLstmOnnxException($"{path}: field '{Field(field)}' must be positive; found {value}.");
        }
        if (VocabSize > int.MaxValue) throw new XLstmOnnxException($"{path}: field '{Field(nameof(VocabSize))}' must be at most {int.MaxValue}; found {VocabSize}.");
        foreach (var (field, id) in new[] { (nameof(BosTokenId), BosTokenId), (nameof(EosTokenId), EosTokenId), (nameof(PadTokenId), PadTokenId) })
        {
            if (id is { } v && (v < 0 || v >= VocabSize)) throw new XLstmOnnxException($"{path}: field '{Field(field)}' must be null or a token id in [0, {VocabSize}); found {v}.");
        }
    }

    /// <summary>"field 'mlstm_kernels' is "fused"; expected "onnx" or "custom"" when <paramref name="e"/> is a bad enum value, else null.</summary>
    private static string? BadValue(string json, JsonException e)
    {
        if (e.Path is not { } at || !at.StartsWith("$.", StringComparison.Ordinal)) return null;
        string field = at[2..];
        var property = ManifestJson.Default.ModelManifest.Properties.FirstOrDefault(p => p.Name == field);
        var type = property is null ? null : Nullable.GetUnderlyingType(property.PropertyType) ?? property.PropertyType;
        if (type is null || !type.IsEnum) return null;
        var info = ManifestJson.Default.GetTypeInfo(type)!;
        var names = Enum.GetValuesAsUnderlyingType(type).Cast<object>()
            .Select(v => JsonSerializer.Serialize(Enum.ToObject(type, v), info)).ToList();
        string found;
        try
        {
            using var doc = JsonDocument.Parse(json);
            found = doc.RootElement.TryGetProperty(field, out var value) ? value.GetRawText() : "(missing)";
        }
        catch (Exception x) when (x is JsonException or InvalidOperationException)
        {
            return null;
        }
        return $"field '{field}' is {found}; expected {ContractNames.Alternatives(names)}";
    }
}

/// <summary>The manifest's JSON, source-generated: snake_case names, indented, nulls written.</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, WriteIndented = true,
    DefaultIgnoreCondition = JsonIgnoreCondition.Never)]
[JsonSerializable(typeof(ModelManifest))]
[JsonSerializable(typeof(LinearKernels))] // an export option, named as the manifest names its enums
internal sealed partial class ManifestJson : JsonSerializerContext
{
    /// <summary>The metadata of one of the manifest's enums.</summary>
    public static JsonTypeInfo<TEnum> EnumInfo<TEnum>() where TEnum : struct, Enum =>
        (JsonTypeInfo<TEnum>)(Default.GetTypeInfo(typeof(TEnum)) ?? throw new ArgumentException($"{typeof(TEnum).Name} is not a manifest enum"));
}
