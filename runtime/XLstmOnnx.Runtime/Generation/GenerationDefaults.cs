using System.Globalization;
using System.Text.Json;

namespace XLstmOnnx.Runtime.Generation;

/// <summary>
/// The model's decoding defaults, from the <c>generation_config.json</c> the exporter copies beside it (transformers
/// takes its defaults from the same file). transformers' meaning: <c>do_sample</c> false (or absent) is greedy; the
/// sampling fields apply when sampling. Absent fields are neutral: temperature 1, no top-k (transformers would use 50;
/// vLLM, which reads the same file, uses none, and so do we), top-p 1, min-p 0, repetition penalty 1; without
/// <c>max_new_tokens</c> each entry point keeps its own length default. The CLI, the server and
/// <see cref="Serving.XLstmChatClient"/> start from <see cref="Options"/>; whatever a request or an option sets wins.
/// </summary>
public sealed record GenerationDefaults
{
    public const string FileName = "generation_config.json";

    /// <summary>Sample (true) or take the argmax (false: transformers' default).</summary>
    public bool DoSample { get; init; }
    public double Temperature { get; init; } = 1.0;
    /// <summary>0: off.</summary>
    public int TopK { get; init; }
    public double TopP { get; init; } = 1.0;
    public double MinP { get; init; }
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>null: the entry point's own default.</summary>
    public int? MaxNewTokens { get; init; }
    /// <summary>The file read, or null when the model has none (every default is then the neutral one).</summary>
    public string? Path { get; init; }

    /// <summary>These defaults as generation options; <paramref name="maxNewTokens"/> when the file names no max_new_tokens.</summary>
    public GenerationOptions Options(int maxNewTokens) => new()
    {
        Greedy = !DoSample,
        Temperature = Temperature,
        TopK = TopK,
        TopP = TopP,
        MinP = MinP,
        RepetitionPenalty = RepetitionPenalty,
        MaxNewTokens = MaxNewTokens ?? maxNewTokens,
    };

    /// <summary>The defaults of the model in <paramref name="dir"/>: its generation_config.json, or the neutral ones when there is none.</summary>
    /// <exception cref="XLstmOnnxException">The file is not JSON, or a field has the wrong type or range (the message names the file and field).</exception>
    public static GenerationDefaults Load(string dir)
    {
        string path = System.IO.Path.Combine(dir, FileName);
        if (!File.Exists(path)) return new GenerationDefaults();
        try
        {
            return LoadCore(path);
        }
        catch (InvalidOperationException e)
        {
            // System.Text.Json's refusal of a string it cannot decode (a lone surrogate, "\ud800")
            throw new XLstmOnnxException($"{path}: not valid JSON: {e.Message}", e);
        }
    }

    private static GenerationDefaults LoadCore(string path)
    {
        JsonElement root;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            root = doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new XLstmOnnxException($"{path}: not valid JSON: {e.Message}");
        }
        if (root.ValueKind != JsonValueKind.Object) throw new XLstmOnnxException($"{path}: expected a JSON object; found {root.ValueKind}.");
        var d = new GenerationDefaults { Path = path };
        if (Field(root, "do_sample") is { } s) d = d with { DoSample = s.ValueKind is JsonValueKind.True or JsonValueKind.False ? s.GetBoolean() : throw Bad(path, "do_sample", "true or false", s) };
        if (Number(path, root, "temperature") is { } t) d = d with { Temperature = t > 0 ? t : throw Bad(path, "temperature", "positive", root.GetProperty("temperature")) };
        if (Field(root, "top_k") is { } k) d = d with { TopK = k.ValueKind == JsonValueKind.Number && k.TryGetInt32(out int v) && v >= 0 ? v : throw Bad(path, "top_k", "an integer, 0 or more (0: off)", k) };
        if (Number(path, root, "top_p") is { } p) d = d with { TopP = p > 0 && p <= 1 ? p : throw Bad(path, "top_p", "in (0, 1]", root.GetProperty("top_p")) };
        if (Number(path, root, "min_p") is { } m) d = d with { MinP = m >= 0 && m < 1 ? m : throw Bad(path, "min_p", "in [0, 1)", root.GetProperty("min_p")) };
        if (Number(path, root, "repetition_penalty") is { } r) d = d with { RepetitionPenalty = r > 0 ? r : throw Bad(path, "repetition_penalty", "positive", root.GetProperty("repetition_penalty")) };
        if (Field(root, "max_new_tokens") is { } n) d = d with { MaxNewTokens = n.ValueKind == JsonValueKind.Number && n.TryGetInt32(out int v) && v >= 1 ? v : throw Bad(path, "max_new_tokens", "an integer, 1 or more", n) };
        return d;
    }

    /// <summary>The field, or null when absent or JSON null (transformers writes null for unset values).</summary>
    private static JsonElement? Field(JsonElement root, string name) =>
        root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private static double? Number(string path, JsonElement root, string name) =>
        Field(root, name) is not { } v ? null : v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Bad(path, name, "a number", v);

    private static XLstmOnnxException Bad(string path, string field, string expected, JsonElement found) =>
        new(string.Create(CultureInfo.InvariantCulture, $"{path}: field '{field}' must be {expected}; found {found.GetRawText()}."));
}
