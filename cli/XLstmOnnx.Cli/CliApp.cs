using System.CommandLine;

namespace XLstmOnnx.Cli;

/// <summary>The command tree of <c>xlstm-onnx</c>; tests run it in-process.</summary>
public static class CliApp
{
    public static RootCommand Build()
    {
        var root = new RootCommand("xlstm-onnx: export Hugging Face xLSTM checkpoints to ONNX and run them with ONNX Runtime.");
        root.Subcommands.Add(ExportCommand.Create());
        root.Subcommands.Add(VerifyCommand.Create());
        root.Subcommands.Add(MakeCheckpointCommand.Create());
        root.Subcommands.Add(InspectCommand.Create());
        root.Subcommands.Add(GenerateCommand.Create());
        root.Subcommands.Add(ChatCommand.Create());
        root.Subcommands.Add(ScoreCommand.Create());
        root.Subcommands.Add(ServeCommand.Create());
        root.Subcommands.Add(RouteCommand.Create());
        root.Subcommands.Add(LoadTestCommand.Create());
        root.Subcommands.Add(BenchCommand.Create());
        return root;
    }

    public static int Run(string[] args) => Build().Parse(args).Invoke();
}
