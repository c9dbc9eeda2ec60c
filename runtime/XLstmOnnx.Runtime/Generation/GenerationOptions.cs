namespace XLstmOnnx.Runtime.Generation;

/// <summary>How tokens are chosen and when generation stops. The logits get the logit bias, the repetition penalty,
/// then the frequency and presence penalties (vLLM's order); sampling then follows transformers' order: temperature,
/// top-k, top-p, min-p, then a draw.</summary>
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
    /// <summary>OpenAI's presence penalty: subtracted once from the logit of every id already generated (the prompt does not count); 0 is none.</summary>
    public double PresencePenalty { get; init; }
    /// <summary>OpenAI's frequency penalty: subtracted from the logit of every id once per time it was generated (the prompt does not count); 0 is none.</summary>
    public double FrequencyPenalty { get; init; }
    /// <summary>OpenAI's logit_bias: added to the logits of these ids before anything else (-100 bans an id, 100 all but forces it); null or empty is none.</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }
    /// <summary>Report each chosen token's log-probability (of the model's raw distribution, before bias, penalties and temperature).</summary>
    public bool LogProbs { get; init; }
    /// <summary>Also report this many most likely ids with their log-probabilities (0 to <see cref="XLstmOnnx.Contract.SamplerModel.TopCount"/>).</summary>
    public int TopLogProbs { get; init; }
    /// <summary>Seed of each sequence's random generator: the same seed gives the same text, alone or in a batch.</summary>
    public ulong Seed { get; init; }
    /// <summary>Stop after any of these ids (in addition to the model's EOS unless <see cref="IgnoreEos"/>).</summary>
    public IReadOnlyList<int> StopTokenIds { get; init; } = [];
    /// <summary>Stop once the decoded text contains any of these (needs a tokenizer); the text is cut before it.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    /// <summary>Do not stop at the model's eos_token_id.</summary>
    public bool IgnoreEos { get; init; }

    /// <summary>Throws naming the parameter (<c>GenerationOptions.Temperature</c>), expected and found when a value is out of range.</summary>
    public void Validate()
    {
        if (MaxNewTokens < 0) throw XLstmOnnxException.MustBe(Name(nameof(MaxNewTokens)), "zero or positive", MaxNewTokens);
        if (!Greedy && !(Temperature > 0)) throw XLstmOnnxException.MustBe(Name(nameof(Temperature)), $"positive (or {Name(nameof(Greedy))} for argmax)", Temperature);
        if (TopK < 0) throw XLstmOnnxException.MustBe(Name(nameof(TopK)), "zero (off) or positive", TopK);
        if (!(TopP > 0 && TopP <= 1)) throw XLstmOnnxException.MustBe(Name(nameof(TopP)), "in (0, 1]", TopP);
        if (!(MinP >= 0 && MinP < 1)) throw XLstmOnnxException.MustBe(Name(nameof(MinP)), "in [0, 1)", MinP);
        if (!(RepetitionPenalty > 0)) throw XLstmOnnxException.MustBe(Name(nameof(RepetitionPenalty)), "positive", RepetitionPenalty);
        if (!(PresencePenalty >= -2 && PresencePenalty <= 2)) throw XLstmOnnxException.MustBe(Name(nameof(PresencePenalty)), "in [-2, 2]", PresencePenalty);
        if (!(FrequencyPenalty >= -2 && FrequencyPenalty <= 2)) throw XLstmOnnxException.MustBe(Name(nameof(FrequencyPenalty)), "in [-2, 2]", FrequencyPenalty);
        if (TopLogProbs < 0 || TopLogProbs > XLstmOnnx.Contract.SamplerModel.TopCount)
        {
            throw XLstmOnnxException.MustBe(Name(nameof(TopLogProbs)), $"in [0, {XLstmOnnx.Contract.SamplerModel.TopCount}]", TopLogProbs);
        }
        foreach (var (id, bias) in LogitBias ?? new Dictionary<int, float>())
        {
            if (id < 0) throw XLstmOnnxException.MustBe($"{Name(nameof(LogitBias))}[{id}]", "a token id (0 or more)", id);
            if (!(bias >= -100 && bias <= 100)) throw XLstmOnnxException.MustBe($"{Name(nameof(LogitBias))}[{id}]", "in [-100, 100]", bias);
        }
        if (StopStrings.Any(string.IsNullOrEmpty))
        {
            throw XLstmOnnxException.InParameter(Name(nameof(StopStrings)), $"{Name(nameof(StopStrings))} must be non-empty strings; found an empty string.");
        }
        foreach (int id in StopTokenIds)
        {
            if (id < 0) throw XLstmOnnxException.MustBe(Name(nameof(StopTokenIds)), "token ids (0 or more)", id);
        }
    }

    /// <summary>
    /// <see cref="Validate()"/>, and the token ids checked against a model's vocabulary of <paramref name="vocabSize"/>: a
    /// stop id the model can never produce is a mistake, not a no-op.
    /// </summary>
    public void Validate(long vocabSize)
    {
        Validate();
        foreach (int id in StopTokenIds)
        {
            if (id >= vocabSize) throw XLstmOnnxException.MustBe(Name(nameof(StopTokenIds)), $"token ids in [0, {vocabSize}) (the model's vocabulary)", id);
        }
    }

    /// <summary>The API name of property <paramref name="property"/>, as errors give it: <c>GenerationOptions.Temperature</c>.</summary>
    public static string Name(string property) => $"{nameof(GenerationOptions)}.{property}";
}

/// <summary>Why a sequence stopped.</summary>
public enum StopReason
{
    None,
    MaxNewTokens,
    StopToken,
    StopString,
}
