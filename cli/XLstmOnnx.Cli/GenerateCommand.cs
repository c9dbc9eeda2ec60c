using System.CommandLine;
using System.Globalization;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Cli;

/// <summary><c>xlstm-onnx generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [sampling] [--print-ids]</c></summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var sampling = new SamplingOptions();
        var prompt = new Option<string?>("--prompt") { Description = "Prompt text (needs the model's tokenizer.json)." };
        var promptIds = new Option<string?>("--prompt-ids") { Description = "Prompt as comma-separated token ids." };
        var printIds = new Option<bool>("--print-ids") { Description = "Print the generated ids (space-separated) as the last line." };
        var saveState = new Option<string?>("--save-state") { Description = "Save the state after generation to this file (safetensors)." };
        var loadState = new Option<string?>("--load-state") { Description = "Start from a saved state; the prompt (may be empty) is appended to it." };
        var cmd = new Command("generate", "Generate a continuation of a prompt, streaming it as it is produced.") { prompt, promptIds, printIds, saveState, loadState };
        model.AddTo(cmd);
        sampling.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            string? text = r.GetValue(prompt);
            if (text is not null && r.GetValue(promptIds) is not null) throw new XLstmOnnxException("options --prompt and --prompt-ids exclude each other; give one.");
            // where the state goes is checked now, not after the generation it would lose
            if (r.GetValue(saveState) is { } target) CheckWritable(target, "--save-state");
            using var session = model.Load(r);
            var tokenizer = session.Tokenizer;
            int[] ids = r.GetValue(promptIds) is { } list ? SamplingOptions.ParseIds(list, "--prompt-ids")
                : text is not null ? (tokenizer ?? throw new XLstmOnnxException($"option --prompt needs {session.Directory}/tokenizer.json; give --prompt-ids instead.")).Encode(text)
                : r.GetValue(loadState) is not null ? []
                : throw new XLstmOnnxException("give --prompt TEXT or --prompt-ids 1,2,3.");
            var options = sampling.Build(r, session.GenerationDefaults);
            options.Validate(session.Manifest.VocabSize); // every option is checked before anything is printed
            using var generator = new Generator(session, 1);
            if (r.GetValue(loadState) is { } load) generator.Restore(StateSnapshot.Load(load, session.Manifest));
            else if (ids.Length == 0) throw new XLstmOnnxException("the prompt has no tokens; give at least one (or --load-state).");
            var stdout = Console.Out;
            bool printText = tokenizer is not null && !r.GetValue(printIds);
            if (text is not null && printText) stdout.Write(text);
            var result = generator.Generate([ids], options, (_, _, piece) =>
            {
                if (!printText) return;
                stdout.Write(piece);
                stdout.Flush();
            });
            if (printText) stdout.WriteLine();
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"prompt {ids.Length} tokens, generated {result.Tokens[0].Length} ({result.Reasons[0]}); time to first token {result.TimeToFirstToken.TotalMilliseconds:F0} ms, decode {result.DecodeTokensPerSecond:F1} tokens/s on {session.Options.Device.ToString().ToLowerInvariant()}{SamplingOptions.SeedNote(options)}"));
            if (r.GetValue(saveState) is { } save) generator.Snapshot().Save(save);
            if (r.GetValue(printIds)) stdout.WriteLine(string.Join(' ', result.Tokens[0]));
            return 0;
        }));
        return cmd;
    }

    /// <summary>Throws, naming <paramref name="option"/>, when <paramref name="path"/> cannot be written (a folder, a missing folder, no permission).</summary>
    internal static void CheckWritable(string path, string option)
    {
        try
        {
            SafetensorsWriter.CheckTarget(path);
        }
        catch (XLstmOnnxException e)
        {
            throw new XLstmOnnxException($"option {option}: {e.Message}", e);
        }
    }
}
