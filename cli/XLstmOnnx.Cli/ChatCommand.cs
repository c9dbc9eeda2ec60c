using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Cli;

/// <summary>
/// <c>xlstm-onnx chat --model DIR</c>: interactive and multi-turn. Each turn is appended to the live recurrent state
/// (nothing is re-read); the transcript format is plain text with configurable prefixes, since base xLSTM models have
/// no chat template. Commands: /reset, /save FILE, /load FILE, /exit.
/// </summary>
internal static class ChatCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var sampling = new SamplingOptions();
        var system = new Option<string?>("--system") { Description = "Text read once before the first turn (e.g. instructions)." };
        var user = ChoiceOption.Text("--user-prefix", "Text before each user turn.", "\nUser: ");
        var assistant = ChoiceOption.Text("--assistant-prefix", "Text before each reply.", "\nAssistant:");
        var cmd = new Command("chat", "Chat with a model on its live state (multi-turn). /reset (back to the system text), /save FILE, /load FILE, /exit.") { system, user, assistant };
        model.AddTo(cmd);
        sampling.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            using var session = model.Load(r);
            var tokenizer = session.Tokenizer ?? throw new XLstmOnnxException($"chat needs {session.Directory}/tokenizer.json.");
            string userPrefix = r.GetValue(user)!, assistantPrefix = r.GetValue(assistant)!;
            // a reply ends where the model starts the next user turn
            var options = sampling.Build(r, session.GenerationDefaults, [userPrefix.TrimEnd()]);
            options.Validate(session.Manifest.VocabSize); // now, not at the first turn
            using var generator = new Generator(session, 1);
            bool started = false, userPrefixWritten = false;
            int[] systemIds = r.GetValue(system) is { Length: > 0 } sys ? tokenizer.Encode(sys) : [];
            void Begin()
            {
                // the system text starts every conversation: the first and each one after /reset
                started = systemIds.Length > 0;
                userPrefixWritten = false;
                if (started) generator.Append(systemIds);
            }
            Begin();
            Console.Error.WriteLine($"chat: type a message; /reset, /save FILE, /load FILE, /exit{SamplingOptions.SeedNote(options)}");
            while (true)
            {
                Console.Write("> ");
                string? line = Console.ReadLine();
                if (line is null || line.Trim() == "/exit") break;
                if (line.Trim() == "/reset") { generator.Reset(); Begin(); Console.Error.WriteLine("state reset"); continue; }
                // a file that cannot be saved or loaded is reported and the conversation goes on, its state untouched
                if (Command(line, "/save") is { } saveTo)
                {
                    if (Try(() => generator.Snapshot().Save(saveTo))) Console.Error.WriteLine($"state saved to {saveTo}");
                    continue;
                }
                if (Command(line, "/load") is { } loadFrom)
                {
                    // the whole file is read and checked before the live state is replaced
                    if (Try(() => generator.Restore(StateSnapshot.Load(loadFrom, session.Manifest))))
                    {
                        started = true;
                        userPrefixWritten = false;
                        Console.Error.WriteLine($"state loaded from {loadFrom}");
                    }
                    continue;
                }
                // No blank line before the first turn. A reply that ended at the stop string has already written the user
                // prefix into the state (all its tokens are read), so the turn goes on from there instead of repeating it.
                string prefix = !started ? userPrefix.TrimStart('\n')
                    : userPrefixWritten ? userPrefix[userPrefix.TrimEnd().Length..]
                    : userPrefix;
                var turn = tokenizer.Encode(prefix + line + assistantPrefix);
                started = true;
                var result = generator.Generate([turn], options, (_, _, piece) => Console.Write(piece));
                userPrefixWritten = result.Reasons[0] == StopReason.StopString;
                Console.WriteLine();
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"[{result.Tokens[0].Length} tokens, first after {result.TimeToFirstToken.TotalMilliseconds:F0} ms, {result.DecodeTokensPerSecond:F1} tokens/s]"));
            }
            return 0;
        }));
        return cmd;
    }

    /// <summary>The FILE of "/save FILE" (or "" for a bare "/save"), or null when <paramref name="line"/> is not that command.</summary>
    private static string? Command(string line, string name)
    {
        string t = line.Trim();
        if (t == name) return "";
        return t.StartsWith(name + " ", StringComparison.Ordinal) ? t[(name.Length + 1)..].Trim() : null;
    }

    /// <summary>Runs a chat command; on our error prints it and returns false, and the session goes on.</summary>
    private static bool Try(Action action)
    {
        try
        {
            action();
            return true;
        }
        catch (XLstmOnnxException e)
        {
            Console.Error.WriteLine($"error: {CliErrors.Message(e)} (the conversation goes on)");
            return false;
        }
    }
}
