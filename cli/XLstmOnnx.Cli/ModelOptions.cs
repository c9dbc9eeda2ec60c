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

/// <summary>Sampling and stopping options shared by generate and chat.</summary>
internal sealed class SamplingOptions
{
    public readonly Option<int> MaxNewTokens = new("--max-new-tokens") { Description = "Most tokens to generate.", DefaultValueFactory = _ => 128 };
    public readonly Option<bool> Greedy = new("--greedy") { Description = "Argmax decoding (sampling options are ignored)." };
    public readonly Option<double> Temperature = new("--temperature") { Description = "Softmax temperature.", DefaultValueFactory = _ => 1.0 };
    public readonly Option<int> TopK = new("--top-k") { Description = "Keep the k most likely tokens (0: off)." };
    public readonly Option<double> TopP = new("--top-p") { Description = "Nucleus sampling mass (1: off).", DefaultValueFactory = _ => 1.0 };
    public readonly Option<double> MinP = new("--min-p") { Description = "Drop tokens below min_p × the top probability (0: off)." };
    public readonly Option<double> RepetitionPenalty = new("--repetition-penalty") { Description = "transformers' repetition penalty (1: off).", DefaultValueFactory = _ => 1.0 };
    public readonly Option<ulong> Seed = new("--seed") { Description = "Random seed (same seed, same text)." };
    public readonly Option<string?> StopTokenIds = new("--stop-token-ids") { Description = "Comma-separated ids that end generation (besides EOS)." };
    public readonly Option<string[]> Stop = new("--stop") { Description = "A string that ends generation (repeatable).", AllowMultipleArgumentsPerToken = false };
    public readonly Option<bool> IgnoreEos = new("--ignore-eos") { Description = "Do not stop at the model's eos_token_id." };

    public void AddTo(Command c)
    {
        foreach (var o in new Option[] { MaxNewTokens, Greedy, Temperature, TopK, TopP, MinP, RepetitionPenalty, Seed, StopTokenIds, Stop, IgnoreEos }) c.Options.Add(o);
    }

    public GenerationOptions Build(ParseResult r, IReadOnlyList<string>? extraStops = null) => new()
    {
        MaxNewTokens = r.GetValue(MaxNewTokens),
        Greedy = r.GetValue(Greedy),
        Temperature = r.GetValue(Temperature),
        TopK = r.GetValue(TopK),
        TopP = r.GetValue(TopP),
        MinP = r.GetValue(MinP),
        RepetitionPenalty = r.GetValue(RepetitionPenalty),
        Seed = r.GetValue(Seed),
        StopTokenIds = ParseIds(r.GetValue(StopTokenIds), "--stop-token-ids"),
        StopStrings = [.. r.GetValue(Stop) ?? [], .. extraStops ?? []],
        IgnoreEos = r.GetValue(IgnoreEos),
    };

    /// <summary>"1,2, 3" to ids; throws naming the option and the bad entry.</summary>
    public static int[] ParseIds(string? text, string option)
    {
        if (string.IsNullOrWhiteSpace(text)) return [];
        return text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s =>
            int.TryParse(s, out int id) && id >= 0 ? id : throw new XLstmOnnxException($"option {option}: \"{s}\" is not a token id (a non-negative integer).")).ToArray();
    }
}
