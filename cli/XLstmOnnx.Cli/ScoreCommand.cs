using System.CommandLine;
using System.Globalization;
using XLstmOnnx.Runtime;

namespace XLstmOnnx.Cli;

/// <summary><c>xlstm-onnx score --model DIR --text FILE [--window N]</c>: loss and perplexity as transformers' labels loss.</summary>
internal static class ScoreCommand
{
    public static Command Create()
    {
        var model = new ModelOptions(cudaGraph: false);
        var text = new Option<string>("--text") { Description = "UTF-8 text file to score.", Required = true };
        var window = new Option<int>("--window") { Description = "Tokens per call; the state carries over.", DefaultValueFactory = _ => 1024 };
        var cmd = new Command("score", "Mean next-token cross-entropy (transformers' labels loss) and perplexity over a text file.") { text, window };
        model.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            using var session = model.Load(r);
            var tokenizer = session.Tokenizer ?? throw new XLstmOnnxException($"score needs {session.Directory}/tokenizer.json.");
            string path = r.GetValue(text)!;
            if (!File.Exists(path)) throw new XLstmOnnxException($"option --text: file {path} not found.");
            var ids = tokenizer.Encode(File.ReadAllText(path));
            if (ids.Length < 2) throw new XLstmOnnxException($"{path}: {ids.Length} tokens; scoring needs at least 2.");
            var result = CliErrors.WithProgress("score", report =>
                Scorer.Score(session, ids, null, r.GetValue(window), new SyncProgress(f => report(f, ""))));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"tokens {ids.Length}, scored {result.Tokens}, loss {result.Loss:F6}, perplexity {result.Perplexity:F4}"));
            return 0;
        }));
        return cmd;
    }

    private sealed class SyncProgress(Action<double> a) : IProgress<double>
    {
        public void Report(double value) => a(value);
    }
}
