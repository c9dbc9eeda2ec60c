using System.CommandLine;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Cli;

/// <summary>
/// Options shared by the commands that load a model: --model, --device, --device-id, --threads, and --cuda-graph where
/// a command decodes step by step (generate, chat, bench, serve): the commands that run whole sequences (score, verify)
/// have no decode step to capture, and do not offer it.
/// </summary>
internal sealed class ModelOptions(bool cudaGraph = true)
{
    public readonly Option<string> Model = new("--model") { Description = "Exported model folder.", Required = true };
    public readonly Option<Choice<string>> Device = ChoiceOption.ForNames("--device", "cpu or cuda.", "cpu", "cpu", "cuda");
    public readonly Option<int> DeviceId = new("--device-id") { Description = "CUDA device ordinal." };
    public readonly Option<int> Threads = new("--threads") { Description = "Intra-op threads (0: ONNX Runtime's choice)." };
    public readonly Option<bool> CudaGraph = new("--cuda-graph") { Description = "With --device cuda: replay each decode step as a CUDA graph (models exported with --mlstm-kernels custom)." };

    public void AddTo(Command c)
    {
        c.Options.Add(Model);
        c.Options.Add(Device);
        c.Options.Add(DeviceId);
        c.Options.Add(Threads);
        if (cudaGraph) c.Options.Add(CudaGraph);
    }

    public XLstmSession Load(ParseResult r, string? profilePrefix = null) => XLstmSession.Load(r.GetValue(Model)!, new RuntimeOptions
    {
        ProfilePrefix = profilePrefix,
        Device = RuntimeOptions.ParseDevice(r.GetValue(Device)!),
        DeviceId = r.GetValue(DeviceId),
        Threads = r.GetValue(Threads),
        CudaGraph = cudaGraph && r.GetValue(CudaGraph),
    });
}

/// <summary>
/// Sampling and stopping options shared by generate and chat. Defaults come from the model's generation_config.json
/// (<see cref="GenerationDefaults"/>: do_sample false or absent is greedy, transformers' meaning); an option given here
/// wins: --greedy or --do-sample choose the mode, --temperature samples at that temperature. Sampling without --seed
/// draws a random seed, which the command reports on stderr.
/// </summary>
internal sealed class SamplingOptions
{
    public readonly Option<int?> MaxNewTokens = new("--max-new-tokens") { Description = "Most tokens to generate (default: generation_config.json's max_new_tokens, else 128)." };
    public readonly Option<bool> Greedy = new("--greedy") { Description = "Argmax decoding (sampling options are ignored)." };
    public readonly Option<bool> DoSample = new("--do-sample") { Description = "Sample, whatever generation_config.json's do_sample says." };
    public readonly Option<double?> Temperature = new("--temperature") { Description = "Softmax temperature; giving it samples (default: generation_config.json's, else 1)." };
    public readonly Option<int?> TopK = new("--top-k") { Description = "Keep the k most likely tokens (0: off; default: generation_config.json's, else off)." };
    public readonly Option<double?> TopP = new("--top-p") { Description = "Nucleus sampling mass (1: off; default: generation_config.json's, else 1)." };
    public readonly Option<double?> MinP = new("--min-p") { Description = "Drop tokens below min_p × the top probability (0: off; default: generation_config.json's, else 0)." };
    public readonly Option<double?> RepetitionPenalty = new("--repetition-penalty") { Description = "transformers' repetition penalty (1: off; default: generation_config.json's, else 1)." };
    public readonly Option<double> PresencePenalty = new("--presence-penalty") { Description = "OpenAI's presence penalty over generated tokens (0: off)." };
    public readonly Option<double> FrequencyPenalty = new("--frequency-penalty") { Description = "OpenAI's frequency penalty over generated tokens (0: off)." };
    public readonly Option<ulong?> Seed = new("--seed") { Description = "Random seed (same seed, same text); without it, a random one, reported on stderr." };
    public readonly Option<string?> StopTokenIds = new("--stop-token-ids") { Description = "Comma-separated ids that end generation (besides EOS)." };
    public readonly Option<string[]> Stop = new("--stop") { Description = "A string that ends generation (repeatable).", AllowMultipleArgumentsPerToken = false };
    public readonly Option<bool> IgnoreEos = new("--ignore-eos") { Description = "Do not stop at the model's eos_token_id." };

    public void AddTo(Command c)
    {
        foreach (var o in new Option[] { MaxNewTokens, Greedy, DoSample, Temperature, TopK, TopP, MinP, RepetitionPenalty, PresencePenalty, FrequencyPenalty, Seed, StopTokenIds, Stop, IgnoreEos })
        {
            c.Options.Add(o);
        }
    }

    /// <summary>The model's defaults with the options given on top.</summary>
    public GenerationOptions Build(ParseResult r, GenerationDefaults defaults, IReadOnlyList<string>? extraStops = null)
    {
        if (r.GetValue(Greedy) && r.GetValue(DoSample)) throw new XLstmOnnxException("options --greedy and --do-sample contradict each other; give one.");
        var o = defaults.Options(128);
        if (r.GetValue(MaxNewTokens) is { } max) o = o with { MaxNewTokens = max };
        if (r.GetValue(Temperature) is { } t) o = o with { Temperature = t, Greedy = false };
        if (r.GetValue(DoSample)) o = o with { Greedy = false };
        if (r.GetValue(Greedy)) o = o with { Greedy = true };
        if (r.GetValue(TopK) is { } k) o = o with { TopK = k };
        if (r.GetValue(TopP) is { } p) o = o with { TopP = p };
        if (r.GetValue(MinP) is { } m) o = o with { MinP = m };
        if (r.GetValue(RepetitionPenalty) is { } rep) o = o with { RepetitionPenalty = rep };
        return o with
        {
            PresencePenalty = r.GetValue(PresencePenalty),
            FrequencyPenalty = r.GetValue(FrequencyPenalty),
            Seed = r.GetValue(Seed) ?? (ulong)Random.Shared.NextInt64(),
            StopTokenIds = ParseIds(r.GetValue(StopTokenIds), "--stop-token-ids"),
            StopStrings = [.. r.GetValue(Stop) ?? [], .. extraStops ?? []],
            IgnoreEos = r.GetValue(IgnoreEos),
        };
    }

    /// <summary>What stderr says about the seed of <paramref name="o"/> (nothing for greedy decoding).</summary>
    public static string SeedNote(GenerationOptions o) => o.Greedy ? "" : $"; seed {o.Seed} (--seed {o.Seed} repeats it)";

    /// <summary>"1,2, 3" to ids; throws naming the option and the bad entry.</summary>
    public static int[] ParseIds(string? text, string option)
    {
        if (string.IsNullOrWhiteSpace(text)) return [];
        return text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s =>
            int.TryParse(s, out int id) && id >= 0 ? id : throw new XLstmOnnxException($"option {option}: \"{s}\" is not a token id (a non-negative integer).")).ToArray();
    }
}
