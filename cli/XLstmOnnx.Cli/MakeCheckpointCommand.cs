using System.CommandLine;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Config;

namespace XLstmOnnx.Cli;

/// <summary><c>xlstm-onnx make-checkpoint --config FILE --output DIR [--num-blocks N] [--dtype bf16] [--seed 0]</c>: a random HF checkpoint.</summary>
internal static class MakeCheckpointCommand
{
    public static Command Create()
    {
        var config = new Option<string>("--config") { Description = "An HF xLSTM config.json (e.g. models/presets/xlstm-7b.json).", Required = true };
        var output = new Option<string>("--output") { Description = "Folder to write config.json and model.safetensors into.", Required = true };
        var blocks = new Option<int?>("--num-blocks") { Description = "Override num_blocks and num_hidden_layers (e.g. 2 for a 7B-width test)." };
        // the names of export's --dtype, for safetensors' F32, F16 and BF16
        var dtype = ChoiceOption.Create("--dtype", "Stored dtype: fp32, fp16 or bf16, any case (safetensors F32, F16, BF16).",
            [("fp32", SafetensorsDtype.F32), ("fp16", SafetensorsDtype.F16), ("bf16", SafetensorsDtype.BF16)], SafetensorsDtype.BF16);
        var seed = new Option<int>("--seed") { Description = "Random seed.", DefaultValueFactory = _ => 0 };
        var cmd = new Command("make-checkpoint", "Write a random-weight HF checkpoint for a config (tests and benchmarks).") { config, output, blocks, dtype, seed };
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            var c = XLstmConfig.Load(r.GetValue(config)!);
            if (r.GetValue(blocks) is { } n)
            {
                c = c with { NumBlocks = n, NumHiddenLayers = n };
                c.Validate("--num-blocks");
            }
            SafetensorsDtype dt = r.GetValue(dtype);
            CliErrors.WithProgress("make-checkpoint", report =>
            {
                RandomCheckpoint.Write(c, r.GetValue(output)!, dt, r.GetValue(seed), new Progress(p => report((double)p.Done / p.Total, "")));
                return 0;
            });
            Console.WriteLine($"wrote a random {c.NumBlocks}-block checkpoint (hidden {c.HiddenSize}, {dt}) to {r.GetValue(output)}");
            return 0;
        }));
        return cmd;
    }

    private sealed class Progress(Action<(long Done, long Total)> report) : IProgress<(long Done, long Total)>
    {
        public void Report((long Done, long Total) value) => report(value);
    }
}
