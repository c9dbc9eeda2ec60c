namespace XLstmOnnx.Runtime.Generation;

/// <summary>How tokens are chosen and when generation stops. Sampling follows transformers' order:
/// repetition penalty, then temperature, top-k, top-p, min-p, then a draw.</summary>
public sealed record GenerationOptions
{
    /// <summary>Most tokens to generate per sequence.</summary>
    public int MaxNewTokens { get; init; } = 128;
    /// <summary>Argmax (after the repetition penalty); the sampling settings below are then ignored.</summary>
    public bool Greedy { get; init; }
    public double Temperature { get; init; } = 1.0;
    /// <summary>Keep the k most likely tokens; 0 keeps all.</summary>
    public int TopK { get; init; }
    /// <summary>Keep the smallest set of most likely tokens whose probability reaches p; 1 keeps all.</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Drop tokens less likely than min_p times the most likely one; 0 keeps all.</summary>
    public double MinP { get; init; }
    /// <summary>transformers' repetition penalty on every token already in the sequence; 1 is none.</summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>Seed of each sequence's random generator: the same seed gives the same text, alone or in a batch.</summary>
    public ulong Seed { get; init; }
    /// <summary>Stop after any of these ids (in addition to the model's EOS unless <see cref="IgnoreEos"/>).</summary>
    public IReadOnlyList<int> StopTokenIds { get; init; } = [];
    /// <summary>Stop once the decoded text contains any of these (needs a tokenizer); the text is cut before it.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    /// <summary>Do not stop at the model's eos_token_id.</summary>
    public bool IgnoreEos { get; init; }

    /// <summary>Throws naming the option when a value is out of range.</summary>
    public void Validate()
    {
        void Fail(string option, string expected, object actual) =>
            throw new XLstmOnnxException($"option {option} must be {expected}; found {actual}.");
        if (MaxNewTokens < 0) Fail("--max-new-tokens", "zero or positive", MaxNewTokens);
        if (!Greedy && !(Temperature > 0)) Fail("--temperature", "positive (use --greedy for argmax)", Temperature);
        if (TopK < 0) Fail("--top-k", "zero (off) or positive", TopK);
        if (!(TopP > 0 && TopP <= 1)) Fail("--top-p", "in (0, 1]", TopP);
        if (!(MinP >= 0 && MinP < 1)) Fail("--min-p", "in [0, 1)", MinP);
        if (!(RepetitionPenalty > 0)) Fail("--repetition-penalty", "positive", RepetitionPenalty);
        if (StopStrings.Any(string.IsNullOrEmpty)) Fail("--stop", "non-empty strings", "an empty string");
    }
}

/// <summary>Why a sequence stopped.</summary>
public enum StopReason
{
    None,
    MaxNewTokens,
    StopToken,
    StopString,
}
