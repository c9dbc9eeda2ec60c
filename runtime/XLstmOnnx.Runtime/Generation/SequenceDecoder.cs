using XLstmOnnx.Contract;
using XLstmOnnx.Runtime.Tokenization;

namespace XLstmOnnx.Runtime.Generation;

/// <summary>
/// One sequence's side of decoding: its sampling settings and random draws, its stops and its text. The batch's tokens
/// are chosen elsewhere (<see cref="TokenChooser"/>); this type turns each chosen token into the text it makes safe to
/// show and a stop reason. Used by <see cref="Generator"/> and the serving engine alike.
/// </summary>
internal sealed class SequenceDecoder
{
    private readonly HashSet<int> _stops = [];
    private readonly TextStopper? _text;
    private ulong _rng;

    /// <param name="options">Validated settings.</param>
    /// <param name="manifest">The model (its EOS id).</param>
    /// <param name="tokenizer">For text and stop strings; null: no text.</param>
    /// <param name="withText">Whether text is wanted (stop strings need it whatever this says).</param>
    public SequenceDecoder(GenerationOptions options, ModelManifest manifest, HfTokenizer? tokenizer, bool withText)
    {
        Options = options;
        _rng = options.Seed;
        foreach (int t in options.StopTokenIds) _stops.Add(t);
        if (!options.IgnoreEos && manifest.EosTokenId is { } eos) _stops.Add((int)eos);
        if (tokenizer is not null && (withText || options.StopStrings.Count > 0)) _text = new TextStopper(tokenizer, options.StopStrings);
    }

    public GenerationOptions Options { get; }

    /// <summary>Tokens accepted so far.</summary>
    public int Generated { get; private set; }

    /// <summary>The last accepted token.</summary>
    public int LastToken { get; private set; }

    /// <summary>
    /// Argmax of the raw logits, nothing reported beside the id: the model's own next_token (or a host argmax) is the
    /// choice. A bias, a penalty or log-probabilities need the sampler.
    /// </summary>
    public bool PlainGreedy => Options.Greedy && !NeedsCounts && !HasBias && !WantsLogProbs;

    /// <summary>The penalties read the counts of the row's tokens (the repetition penalty all of them, the frequency and presence penalties the output's).</summary>
    public bool NeedsCounts => Options.RepetitionPenalty != 1.0 || Options.FrequencyPenalty != 0 || Options.PresencePenalty != 0;

    /// <summary>The row adds a logit bias.</summary>
    public bool HasBias => Options.LogitBias is { Count: > 0 };

    /// <summary>The chosen token's log-probability is reported (and the top ones when <see cref="GenerationOptions.TopLogProbs"/> > 0).</summary>
    public bool WantsLogProbs => Options.LogProbs || Options.TopLogProbs > 0;

    /// <summary>The sampler's settings for this row's next choice (one row of SamplerModel's params); draws a number when sampling.</summary>
    public void WriteParams(Span<double> row)
    {
        row[SamplerModel.InvTemperature] = (float)(1.0 / Options.Temperature);
        row[SamplerModel.TopK] = Options.TopK;
        row[SamplerModel.TopP] = Options.TopP;
        row[SamplerModel.MinP] = Options.MinP;
        row[SamplerModel.RepetitionPenalty] = (float)Options.RepetitionPenalty;
        row[SamplerModel.Greedy] = Options.Greedy ? 1 : 0;
        row[SamplerModel.PresencePenalty] = Options.PresencePenalty;
        row[SamplerModel.FrequencyPenalty] = Options.FrequencyPenalty;
        row[SamplerModel.Uniform] = Options.Greedy ? 0 : NextUniform(ref _rng);
    }

    /// <summary>Takes the chosen token: returns the text it makes safe to show (all the rest at the end) and why the sequence stops, if it does.</summary>
    public (string Text, StopReason Finish) Accept(int token)
    {
        Generated++;
        LastToken = token;
        string text = _text?.Push(token) ?? "";
        var finish = _stops.Contains(token) ? StopReason.StopToken
            : _text?.Stopped == true ? StopReason.StopString
            : Generated >= Options.MaxNewTokens ? StopReason.MaxNewTokens
            : StopReason.None;
        if (finish != StopReason.None && _text is not null) text += _text.Finish();
        return (text, finish);
    }

    /// <summary>SplitMix64's next number in [0, 1) with 53 bits: the sequence's own generator, so a seed means the same draws everywhere.</summary>
    internal static double NextUniform(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 11) * (1.0 / (1UL << 53));
    }
}
