namespace XLstmOnnx.Contract;

/// <summary>
/// The contract of <c>sampler.onnx</c>, the next token of every row of a batch from its last logits, run on the model's
/// execution provider: its file name, version, inputs, outputs and parameter columns. The graph builder writes it
/// (SamplerBuilder), the runtime binds it. The algorithm: logit bias, then transformers' repetition penalty, OpenAI's
/// frequency and presence penalties (where vLLM applies them: after the bias, before temperature), then temperature,
/// top-k, top-p, min-p, and a draw with the row's own uniform number. Beside the choice it returns the raw
/// log-probability of the chosen id and the <see cref="TopCount"/> most likely ids with theirs (OpenAI's logprobs).
/// </summary>
public static class SamplerModel
{
    public const string FileName = "sampler.onnx";

    /// <summary>Version of the contract below; the manifest records it and the runtime checks it.</summary>
    /// <remarks>
    /// 2: logit bias, frequency and presence penalties over output counts, the top <see cref="TopCount"/> log-probabilities.
    /// 3: <see cref="NextToken"/> is <see cref="GraphNames.NonFiniteToken"/> for a row whose logits are not all finite.
    /// </remarks>
    public const int Version = 3;

    /// <summary>Most likely ids returned per row (OpenAI's top_logprobs go up to 20); fewer when the vocabulary is smaller.</summary>
    public const int TopCount = 20;

    // inputs
    public const string Logits = "logits";              // float [B, 1, V]: the model's last logits
    public const string Params = "params";              // double [B, ParamCount]: per-row settings, columns below
    public const string Counts = "counts";              // float [B, V]: occurrences of each id in the row's prompt and output (repetition penalty)
    public const string OutputCounts = "output_counts"; // float [B, V]: occurrences of each id in the row's output only (frequency and presence penalties)
    public const string Bias = "bias";                  // float [B, V]: added to the logits first (OpenAI's logit_bias, dense per row; zeros: none)
    public const string VocabLimit = "vocab_limit";     // int64 [1]: ids at or above it are never chosen (padded embeddings)
    // outputs
    public const string NextToken = "next_token";       // int64 [B, 1]; GraphNames.NonFiniteToken where the row's logits (all V) hold NaN or ±Inf
    public const string LogProb = "logprob";            // float [B, 1]: log-softmax of the raw logits (ids below vocab_limit) at next_token
    public const string CountsOut = "counts_out";       // float [B, V]: counts with next_token added
    public const string OutputCountsOut = "output_counts_out"; // float [B, V]: output_counts with next_token added
    public const string TopIds = "top_ids";             // int64 [B, min(TopCount, V)]: the most likely ids of the raw logits, most likely first (ties: lower id)
    public const string TopLogProbs = "top_logprobs";   // float [B, min(TopCount, V)]: their log-probabilities (as logprob)

    /// <summary>Columns of <see cref="Params"/>.</summary>
    public const int InvTemperature = 0, TopK = 1, TopP = 2, MinP = 3, RepetitionPenalty = 4, Greedy = 5, Uniform = 6,
        PresencePenalty = 7, FrequencyPenalty = 8, ParamCount = 9;

    /// <summary>The number of top ids a sampler for <paramref name="vocab"/> logits returns.</summary>
    public static int TopCountFor(long vocab) => (int)Math.Min(TopCount, vocab);
}
