using Microsoft.ML.OnnxRuntime;

namespace XLstmOnnx.Runtime.Tokenization;

/// <summary>
/// Runs an exported <c>tokenizer.onnx</c> (onnxruntime-extensions' HfJsonTokenizer) on the CPU: text to ids.
/// An independent second tokenizer; note that it ignores tokenizer.json's normalizer. Owns its session.
/// </summary>
public sealed class OnnxTokenizer : IDisposable
{
    private readonly InferenceSession _session;

    public OnnxTokenizer(string path)
    {
        if (!File.Exists(path)) throw new XLstmOnnxException($"{path}: tokenizer model not found (the exporter writes it when the checkpoint has tokenizer.json).");
        using var options = new SessionOptions();
        options.RegisterOrtExtensions();
        _session = new InferenceSession(path, options);
    }

    /// <summary>The ids of one text.</summary>
    public int[] Encode(string text)
    {
        using var input = OrtValue.CreateTensorWithEmptyStrings(OrtAllocator.DefaultInstance, [1]);
        input.StringTensorSetElementAt(text.AsSpan(), 0);
        using var runOptions = new RunOptions();
        using var outputs = _session.Run(runOptions, ["text"], [input], ["input_ids"]);
        return outputs[0].GetTensorDataAsSpan<long>().ToArray().Select(i => (int)i).ToArray();
    }

    public void Dispose() => _session.Dispose();
}
