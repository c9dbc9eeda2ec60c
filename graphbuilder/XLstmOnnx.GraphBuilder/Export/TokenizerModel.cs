using System.Text.Json;
using Google.Protobuf;
using XLstmOnnx.GraphBuilder.Graph;
using XLstmOnnx.GraphBuilder.Onnx;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.GraphBuilder.Export;

/// <summary>
/// Writes <c>tokenizer.onnx</c>: text [N] (string) to input_ids [N, L] (int64) with onnxruntime-extensions'
/// <c>HfJsonTokenizer</c>, which reads tokenizer.json itself. For ONNX-only consumers, and a second, independent
/// tokenizer implementation for tests. Known difference: it ignores tokenizer.json's normalizer (NFC).
/// </summary>
public static class TokenizerModel
{
    public const string FileName = "tokenizer.onnx";
    public const string ExtensionsDomain = "ai.onnx.contrib";

    /// <summary>tokenizer_class values onnxruntime-extensions 0.14 knows for byte-level BPE; others fall back to GPT2Tokenizer.</summary>
    private static readonly string[] KnownClasses = ["GPT2Tokenizer", "GPTNeoXTokenizer", "CodeGenTokenizer", "Qwen2Tokenizer", "LlamaTokenizer"];

    public static byte[] Build(string tokenizerJsonPath, string? tokenizerConfigPath)
    {
        string cls = "GPT2Tokenizer";
        if (tokenizerConfigPath is not null && File.Exists(tokenizerConfigPath))
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(tokenizerConfigPath));
            if (doc.RootElement.TryGetProperty("tokenizer_class", out var c) && c.GetString() is { } name)
            {
                string plain = name.Replace("Fast", "", StringComparison.Ordinal);
                if (KnownClasses.Contains(plain)) cls = plain;
            }
        }
        var g = new OnnxGraph("tokenizer");
        g.Input("text", DataType.String, "batch");
        string[] outs = g.Node("/tokenizer/HfJsonTokenizer", "HfJsonTokenizer", ["text"], 2, ExtensionsDomain,
            Attr.Str("tokenizer_vocab", File.ReadAllText(tokenizerJsonPath)),
            Attr.Str("tokenizer_config", JsonSerializer.Serialize(new Dictionary<string, string> { ["tokenizer_class"] = cls })));
        g.Output("input_ids", outs[0], DataType.Int64, "batch", "tokens");
        g.Output("attention_mask", outs[1], DataType.Int64, "batch", "tokens");
        var model = new ModelProto { IrVersion = ExportOptions.IrVersion, ProducerName = "XLstmOnnx", Graph = g.Proto };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = ExportOptions.Opset });
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = ExtensionsDomain, Version = 1 });
        return model.ToByteArray();
    }
}
