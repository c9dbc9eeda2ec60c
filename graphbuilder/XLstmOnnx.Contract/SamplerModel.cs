namespace XLstmOnnx.Contract;

/// <summary>
/// The contract of <c>sampler.onnx</c>, the next token of every row of a batch from its last logits, run on the model's
/// execution provider: its file name, version, inputs, outputs and parameter columns. The graph builder writes it
/// (SamplerBuilder), the runtime binds it. The algorithm is transformers' order: repetition penalty, then temperature,
/// top-k, top-p, min-p, then a draw with the row's own uniform number.
/// </summary>
public static class SamplerModel
{
    public const string FileName = "sampler.onnx";

    /// <summary>Version of the contract below; the manifest records it and the runtime checks it.</summary>
    public const int Version = 1;

    // inputs
    public const string Logits = "logits";            // float [B, 1, V]: the model's last logits
    public const string Params = "params";            // double [B, ParamCount]: per-row settings, columns below
    public const string Counts = "counts";            // float [B, V]: occurrences of each id in the row's prompt and output
    public const string VocabLimit = "vocab_limit";   // int64 [1]: ids at or above it are never chosen (padded embeddings)
    // outputs
    public const string NextToken = "next_token";     // int64 [B, 1]
    public const string LogProb = "logprob";          // float [B, 1]: log-softmax of the raw logits at next_token
    public const string CountsOut = "counts_out";     // float [B, V]: counts with next_token added

    /// <summary>Columns of <see cref="Params"/>.</summary>
    public const int InvTemperature = 0, TopK = 1, TopP = 2, MinP = 3, RepetitionPenalty = 4, Greedy = 5, Uniform = 6, ParamCount = 7;
}
