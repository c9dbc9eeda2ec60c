using System.CommandLine;
using XLstmOnnx.Cli;

var root = new RootCommand("xlstm-onnx: export Hugging Face xLSTM checkpoints to ONNX and run them with ONNX Runtime.");
root.Subcommands.Add(ExportCommand.Create());
root.Subcommands.Add(VerifyCommand.Create());
root.Subcommands.Add(MakeCheckpointCommand.Create());
return root.Parse(args).Invoke();
