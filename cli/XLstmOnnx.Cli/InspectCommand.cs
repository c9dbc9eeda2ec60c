using System.CommandLine;
using System.Diagnostics;
using XLstmOnnx.Contract;
using XLstmOnnx.Runtime;

namespace XLstmOnnx.Cli;

/// <summary><c>xlstm-onnx inspect --model DIR [--run N]</c>: load an export, print its contract, optionally run N tokens.</summary>
internal static class InspectCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Exported model folder.", Required = true };
        var run = new Option<int>("--run") { Description = "Run a prompt of this many tokens from a zero state and print the time (0: load only)." };
        var cmd = new Command("inspect", "Load an exported model in ONNX Runtime and print what it takes and returns.") { model, run };
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            var clock = Stopwatch.StartNew();
            using var session = XLstmSession.Load(r.GetValue(model)!);
            var m = session.Manifest;
            Console.WriteLine($"loaded {m.ModelFile}{(m.ExternalDataFile is null ? "" : $" + {m.ExternalDataFile}")} in {clock.Elapsed.TotalSeconds:F1} s");
            Console.WriteLine($"layers {m.NumLayers}, heads {m.NumHeads}, DQK {m.QkHeadDim}, DV {m.VHeadDim}, hidden {m.HiddenSize}, vocab {m.VocabSize}, chunk {m.ChunkSize}");
            Console.WriteLine($"input {m.Input}; logits {m.Logits.JsonName()}; outputs {string.Join(", ", session.OutputNames.Take(4))}{(session.OutputNames.Count > 4 ? ", ..." : "")}");
            int n = r.GetValue(run);
            if (n > 0)
            {
                var ids = Enumerable.Range(0, n).Select(i => (long)(i * 7919 % m.VocabSize)).ToArray();
                clock.Restart();
                var logits = session.Run(ids, n, session.CreateState(1));
                Console.WriteLine($"ran {n} tokens in {clock.Elapsed.TotalMilliseconds:F0} ms; last-position argmax {Runtime.Generation.Sampler.ArgMax(logits.At(0, logits.Positions - 1))}");
            }
            return 0;
        }));
        return cmd;
    }
}
