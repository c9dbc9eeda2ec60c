using System.CommandLine;
using System.Runtime.InteropServices;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Export;

namespace XLstmOnnx.Cli;

/// <summary>
/// <c>xlstm-onnx export (--checkpoint DIR | --random-weights (--preset NAME | --config FILE) [--num-blocks N] [--seed S])
/// --output DIR [--dtype fp32] [--mlstm-kernels onnx|custom] ...</c>
/// </summary>
internal static class ExportCommand
{
    public static Command Create()
    {
        var checkpoint = new Option<string?>("--checkpoint") { Description = "HF checkpoint folder (config.json and safetensors)." };
        var random = new Option<bool>("--random-weights") { Description = "No checkpoint: seeded random weights for --preset or --config (benchmarks, tests)." };
        var preset = new Option<string?>("--preset") { Description = $"With --random-weights: a config from models/presets ({string.Join(", ", Presets.Names)})." };
        var config = new Option<string?>("--config") { Description = "With --random-weights: an HF config.json." };
        var blocks = new Option<int?>("--num-blocks") { Description = "With --random-weights: override num_blocks (e.g. 2 for a 7B-width test)." };
        var seed = new Option<int>("--seed") { Description = "With --random-weights: the seed." };
        var quantize = new Option<string?>("--quantize") { Description = "int4: the large projections as 4-bit blocks (com.microsoft::MatMulNBits)." };
        quantize.AcceptOnlyFromAmong("int4");
        var blockSize = new Option<int>("--block-size") { Description = "With --quantize: inputs per 4-bit block.", DefaultValueFactory = _ => 32 };
        var output = new Option<string>("--output") { Description = "Folder to write the exported model into (new, empty, or a previous export).", Required = true };
        var dtype = ChoiceOption.Create("--dtype", "Weights and activations: fp32, fp16 or bf16, any case (gates, state and logits stay float32).",
            [.. Enum.GetValues<WeightDtype>().Select(d => (d.JsonName(), d))], WeightDtype.Fp32);
        var lastOnly = new Option<bool>("--last-logits-only") { Description = "Emit logits for the last position only ([B,1,V])." };
        var nextToken = new Option<bool>("--next-token") { Description = "With --last-logits-only: add a next_token output (argmax on the device; greedy steps copy ids, not logits)." };
        var embeds = new Option<bool>("--inputs-embeds") { Description = "Take inputs_embeds [B,S,E] instead of input_ids." };
        var hidden = new Option<bool>("--hidden-states") { Description = "Add hidden_states.{i} outputs in transformers' order (the embeddings, blocks 0..N-2, the final norm) for debugging." };
        var external = ChoiceOption.ForEnum("--external-data", "Weights in model.onnx.data: auto (above 1 GiB), always or never.", ExternalDataMode.Auto);
        var kernels = ChoiceOption.ForEnum("--mlstm-kernels",
            "mLSTM cell: onnx (standard ops, portable) or custom (ai.xlstm ops; needs libxlstm_customops.so, built from customops/).", MLstmKernels.Onnx);
        var stateDtype = ChoiceOption.Create("--state-dtype",
            "Stored type of the recurrent state's C and n: float32 or bf16 (half the bytes a decode step streams per sequence; m and the math stay float32).",
            [.. Enum.GetValues<StateDtype>().Select(d => (d.JsonName(), d))], StateDtype.Float32);
        var mixed = new Option<bool>("--mixed-graph")
        {
            Description = "Also write model.mixed.onnx: a decode step and a prompt piece in one call (one pass over the weights for both), "
                + "which serve uses to read prompts inside decode steps. Reads the same weights file; needs --mlstm-kernels custom.",
        };
        var allowNonFinite = new Option<bool>("--allow-non-finite") { Description = "Export weights that hold NaN or Inf (refused by default, naming the tensor and index)." };
        var linear = new Option<string?>("--linear-kernels")
        {
            Description = "Projections: onnx (Gemm), custom (ai.xlstm::Linear: our kernel for the decode steps where it beats cuBLAS, cuBLAS otherwise) "
                + "or batch-invariant (every decode step on our kernels: a sequence's tokens do not depend on the batch; slower above 16 rows). "
                + "Needs --mlstm-kernels custom. Default: custom for fp16 and bf16 exports with --mlstm-kernels custom and no --quantize, else onnx.",
        };
        linear.AcceptOnlyFromAmong("onnx", "custom", "batch-invariant");
        var cmd = new Command("export", "Export an HF xLSTM checkpoint (or random weights for a config) to ONNX.")
            { checkpoint, random, preset, config, blocks, seed, output, dtype, quantize, blockSize, lastOnly, nextToken, embeds, hidden, external, kernels, linear, stateDtype, mixed, allowNonFinite };
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            var options = new ExportOptions
            {
                Dtype = r.GetValue(dtype),
                LastLogitsOnly = r.GetValue(lastOnly),
                NextToken = r.GetValue(nextToken),
                InputsEmbeds = r.GetValue(embeds),
                HiddenStates = r.GetValue(hidden),
                ExternalData = r.GetValue(external),
                MLstmKernels = r.GetValue(kernels),
                LinearKernels = r.GetValue(linear) switch
                {
                    "onnx" => LinearKernels.Onnx,
                    "custom" => LinearKernels.Custom,
                    "batch-invariant" => LinearKernels.BatchInvariant,
                    _ => null,
                },
                StateDtype = r.GetValue(stateDtype),
                MixedGraph = r.GetValue(mixed),
                QuantizeBits = r.GetValue(quantize) is null ? null : 4,
                QuantizeBlockSize = r.GetValue(blockSize),
                AllowNonFinite = r.GetValue(allowNonFinite),
            };
            // SIGTERM and SIGINT cancel the export, which then removes its staging folder (SIGKILL cannot be caught: the
            // next export to the same place removes what it left)
            using var cancel = new CancellationTokenSource();
            PosixSignal? caught = null;
            void Stop(PosixSignalContext c)
            {
                c.Cancel = true; // not the default exit: let the export unwind and clean up
                caught = c.Signal;
                cancel.Cancel();
            }
            using var onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
            using var onInt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
            long peakAnon = 0;
            var progress = (Action<double, string> report) => new Progress(p =>
            {
                peakAnon = Math.Max(peakAnon, MemoryStats.AnonymousBytes());
                report(p.BytesTotal == 0 ? 1 : (double)p.BytesDone / p.BytesTotal, p.Tensor);
            });
            ExportResult? result;
            ExportResult? Interruptible(Func<ExportResult> export)
            {
                try
                {
                    return export();
                }
                catch (OperationCanceledException) when (cancel.IsCancellationRequested)
                {
                    return null;
                }
            }
            if (r.GetValue(random))
            {
                if (r.GetValue(checkpoint) is not null) throw new XLstmOnnxException("options --checkpoint and --random-weights exclude each other; give one.");
                var c = (r.GetValue(preset), r.GetValue(config)) switch
                {
                    ({ } name, null) => Presets.Load(name),
                    (null, { } file) => XLstmConfig.Load(file),
                    _ => throw new XLstmOnnxException("option --random-weights needs exactly one of --preset NAME or --config FILE."),
                };
                if (r.GetValue(blocks) is { } n)
                {
                    c = c with { NumBlocks = n, NumHiddenLayers = Math.Max(n, 1) };
                    c.Validate("--num-blocks");
                }
                result = CliErrors.WithProgress("export", report => Interruptible(() =>
                    OnnxExporter.ExportModel(c, RandomCheckpoint.Bind(c, r.GetValue(seed)), r.GetValue(output)!, options, [], progress(report), cancel.Token)));
            }
            else
            {
                string dir = r.GetValue(checkpoint) ?? throw new XLstmOnnxException("give --checkpoint DIR (an HF checkpoint folder) or --random-weights.");
                result = CliErrors.WithProgress("export", report => Interruptible(() => OnnxExporter.Export(dir, r.GetValue(output)!, options, progress(report), cancel.Token)));
            }
            if (result is null)
            {
                Console.Error.WriteLine($"export: stopped by {caught}; nothing was written to {r.GetValue(output)}");
                return 128 + (caught == PosixSignal.SIGINT ? 2 : 15); // the shell's code for death by that signal
            }
            Console.WriteLine($"exported {result.NodeCount} nodes, {result.WeightBytes / 1048576.0:F1} MiB of weights{(result.DataPath is null ? "" : " (external data)")} "
                + $"to {result.OutputDir} in {result.Elapsed.TotalSeconds:F1} s");
            if (peakAnon > 0)
            {
                // RSS also counts the memory-mapped checkpoint pages, which the kernel can drop at will; anonymous memory is what the export holds.
                Console.WriteLine($"memory: peak RSS {MemoryStats.PeakRssBytes() / 1048576.0:F0} MiB (includes mapped checkpoint pages), peak anonymous {peakAnon / 1048576.0:F0} MiB");
            }
            return 0;
        }));
        return cmd;
    }

    /// <summary>Synchronous IProgress (System.Progress posts to the thread pool and can report after the bar ends).</summary>
    private sealed class Progress(Action<ExportProgress> report) : IProgress<ExportProgress>
    {
        public void Report(ExportProgress value) => report(value);
    }
}
