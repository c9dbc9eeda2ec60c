using System.Text.RegularExpressions;
using Spectre.Console;
using XLstmOnnx.Cli.Serving;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.GraphBuilder.Graph;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Cli;

/// <summary>Turns our exceptions into one readable line and an exit code; anything else is a bug and keeps its stack.</summary>
internal static class CliErrors
{
    public const int BadInput = 2;

    /// <summary>
    /// The flag of each API parameter that the libraries' errors name (<c>GenerationOptions.Temperature</c> is
    /// <c>--temperature</c>): the one place that knows both names. <see cref="Message"/> rewrites messages with it.
    /// </summary>
    public static readonly IReadOnlyDictionary<string, string> Flags = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        [ExportOptions.Name(nameof(ExportOptions.Dtype))] = "--dtype",
        [ExportOptions.Name(nameof(ExportOptions.QuantizeBits))] = "--quantize",
        [ExportOptions.Name(nameof(ExportOptions.QuantizeBlockSize))] = "--block-size",
        [ExportOptions.Name(nameof(ExportOptions.LastLogitsOnly))] = "--last-logits-only",
        [ExportOptions.Name(nameof(ExportOptions.NextToken))] = "--next-token",
        [ExportOptions.Name(nameof(ExportOptions.InputsEmbeds))] = "--inputs-embeds",
        [ExportOptions.Name(nameof(ExportOptions.HiddenStates))] = "--hidden-states",
        [ExportOptions.Name(nameof(ExportOptions.ExternalData))] = "--external-data",
        [ExportOptions.Name(nameof(ExportOptions.MLstmKernels))] = "--mlstm-kernels",
        [ExportOptions.Name(nameof(ExportOptions.AllowNonFinite))] = "--allow-non-finite",
        [$"{nameof(OnnxExporter)}.{nameof(OnnxExporter.Export)}(outputDir)"] = "--output",
        [ExportOptions.Name(nameof(ExportOptions.LinearKernels))] = "--linear-kernels",
        [ExportOptions.Name(nameof(ExportOptions.StateDtype))] = "--state-dtype",
        [ExportOptions.Name(nameof(ExportOptions.MixedGraph))] = "--mixed-graph",
        [$"{nameof(Int4Quantizer)}(blockSize)"] = "--block-size",
        [$"{nameof(RandomCheckpoint)}.{nameof(RandomCheckpoint.Write)}(dtype)"] = "--dtype",
        [Scorer.WindowParameter] = "--window",
        [RuntimeOptions.Name(nameof(RuntimeOptions.Device))] = "--device",
        [RuntimeOptions.Name(nameof(RuntimeOptions.DeviceId))] = "--device-id",
        [RuntimeOptions.Name(nameof(RuntimeOptions.Threads))] = "--threads",
        [RuntimeOptions.Name(nameof(RuntimeOptions.CudaGraph))] = "--cuda-graph",
        [RuntimeOptions.Name(nameof(RuntimeOptions.ProfilePrefix))] = "--profile",
        [GenerationOptions.Name(nameof(GenerationOptions.MaxNewTokens))] = "--max-new-tokens",
        [GenerationOptions.Name(nameof(GenerationOptions.Greedy))] = "--greedy",
        [GenerationOptions.Name(nameof(GenerationOptions.Temperature))] = "--temperature",
        [GenerationOptions.Name(nameof(GenerationOptions.TopK))] = "--top-k",
        [GenerationOptions.Name(nameof(GenerationOptions.TopP))] = "--top-p",
        [GenerationOptions.Name(nameof(GenerationOptions.MinP))] = "--min-p",
        [GenerationOptions.Name(nameof(GenerationOptions.RepetitionPenalty))] = "--repetition-penalty",
        [GenerationOptions.Name(nameof(GenerationOptions.PresencePenalty))] = "--presence-penalty",
        [GenerationOptions.Name(nameof(GenerationOptions.FrequencyPenalty))] = "--frequency-penalty",
        [GenerationOptions.Name(nameof(GenerationOptions.Seed))] = "--seed",
        [GenerationOptions.Name(nameof(GenerationOptions.StopTokenIds))] = "--stop-token-ids",
        [GenerationOptions.Name(nameof(GenerationOptions.StopStrings))] = "--stop",
        [GenerationOptions.Name(nameof(GenerationOptions.IgnoreEos))] = "--ignore-eos",
        [ServingOptions.Name(nameof(ServingOptions.MaxBatch))] = "--max-batch",
        [ServingOptions.Name(nameof(ServingOptions.QueueCapacity))] = "--queue",
        [ServingOptions.Name(nameof(ServingOptions.PrefixCacheBytes))] = "--prefix-cache-mb",
        [ServingOptions.Name(nameof(ServingOptions.PrefillRows))] = "--prefill-rows",
        [ServingOptions.Name(nameof(ServingOptions.PrefillChunkTokens))] = "--prefill-chunk",
        [ServingOptions.Name(nameof(ServingOptions.PrefillGatherSteps))] = "--prefill-gather-steps",
        [ServingOptions.Name(nameof(ServingOptions.DecodeBuckets))] = "--decode-buckets",
        [ServingOptions.Name(nameof(ServingOptions.MixedSteps))] = "--mixed-steps",
        [ServingOptions.Name(nameof(ServingOptions.PadPrompts))] = "--pad-prompts",
        [ServingOptions.Name(nameof(ServingOptions.MixedPromptRows))] = "--mixed-prompt-rows",
        [ServerOptions.Name(nameof(ServerOptions.Host))] = "--host",
        [ServerOptions.Name(nameof(ServerOptions.Port))] = "--port",
        [ServerOptions.Name(nameof(ServerOptions.AllowRemote))] = "--allow-remote",
        [ServerOptions.Name(nameof(ServerOptions.ApiKey))] = "--api-key",
        [ServerOptions.Name(nameof(ServerOptions.AllowedOrigins))] = "--allowed-origins",
    };

    /// <summary>Any parameter of <see cref="Flags"/>, whole (<c>RuntimeOptions.Device</c> is not the start of <c>RuntimeOptions.DeviceId</c>).</summary>
    private static readonly Regex Parameters = new(
        @"(?<![\w.])(?:" + string.Join('|', Flags.Keys.OrderByDescending(k => k.Length).Select(Regex.Escape)) + @")(?!\w)",
        RegexOptions.CultureInvariant);

    /// <summary>
    /// The message of <paramref name="e"/> in the CLI's words: every parameter named by its flag, and an error that
    /// opens with its parameter reads "option --flag ..." (<c>GenerationOptions.Temperature must be positive</c> becomes
    /// <c>option --temperature must be positive</c>).
    /// </summary>
    public static string Message(XLstmOnnxException e)
    {
        string text = Parameters.Replace(e.Message, m => Flags[m.Value]);
        if (e.Parameter is { } p && Flags.TryGetValue(p, out var flag) && text.StartsWith(flag, StringComparison.Ordinal)) text = "option " + text;
        return text;
    }

    public static int Run(Func<int> action)
    {
        try
        {
            return action();
        }
        catch (XLstmOnnxException e)
        {
            Console.Error.WriteLine($"error: {Message(e)}");
            return BadInput;
        }
    }

    /// <summary>Runs <paramref name="work"/> under a progress bar on a terminal, or with plain percentage lines otherwise (CI logs).</summary>
    public static T WithProgress<T>(string title, Func<Action<double, string>, T> work)
    {
        if (!AnsiConsole.Profile.Capabilities.Interactive)
        {
            int lastTenth = -1;
            return work((fraction, what) =>
            {
                int tenth = (int)(fraction * 10);
                if (tenth != lastTenth)
                {
                    lastTenth = tenth;
                    Console.Error.WriteLine($"{title}: {fraction:P0} {what}");
                }
            });
        }
        T result = default!;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(title, maxValue: 1.0);
                result = work((fraction, what) =>
                {
                    task.Value = fraction;
                    task.Description = $"{title} {Markup.Escape(what)}";
                });
                task.Value = 1.0;
            });
        return result;
    }
}
