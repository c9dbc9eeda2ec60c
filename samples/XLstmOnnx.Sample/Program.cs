// Using XLstmOnnx from .NET, in the order an application meets it: load an export, stream a continuation, append text
// to the live state, snapshot and restore it, drive generation step by step, and chat through IChatClient.
//
//   dotnet run --project samples/XLstmOnnx.Sample -c Release -- MODEL_DIR
//
// MODEL_DIR is a folder written by `xlstm-onnx export` (./build.sh --target=Quickstart leaves the shipped model's in
// artifacts/models/kjv-xlstm). CI runs this program against it; it exits with 1 when a check below fails.

using System.Text;
using Microsoft.Extensions.AI;
using XLstmOnnx;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;
using XLstmOnnx.Runtime.Serving;

if (args.Length != 1 || !Directory.Exists(args[0]))
{
    Console.Error.WriteLine("usage: XLstmOnnx.Sample MODEL_DIR   (a folder written by xlstm-onnx export)");
    return 2;
}

try
{
    // 1. Load. RuntimeOptions choose the device (new RuntimeOptions { Device = ExecutionDevice.Cuda }), threads, CUDA graphs.
    using var session = XLstmSession.Load(args[0]);
    var tokenizer = session.Tokenizer ?? throw new XLstmOnnxException($"{args[0]} has no tokenizer.json; this sample works with text.");
    using var generator = new Generator(session); // one sequence; its recurrent state lives in the generator
    var options = new GenerationOptions { MaxNewTokens = 32, Temperature = 0.8, TopP = 0.9, RepetitionPenalty = 1.1, Seed = 1, StopStrings = ["\n"] };

    // 2. Generate, streamed as IAsyncEnumerable<GeneratedToken>: each token with its text and, on the last, why it stopped.
    Section("GenerateAsync: a continuation, token by token");
    const string prompt = "And God said";
    Console.Write(prompt);
    await foreach (var token in generator.GenerateAsync(tokenizer.Encode(prompt), options))
    {
        Console.Write(token.Text);
        if (token.IsLast) Console.WriteLine($"   [{token.Finish}]");
    }

    // 3. Append text to the live state and go on from there: what was read before is never read again.
    Section("Append, then continue from the live state");
    const string more = " And Moses said unto the LORD";
    generator.Append(tokenizer.Encode(more));
    Console.Write(more);
    Console.WriteLine(await TextOf(generator.GenerateAsync(options)));

    // 4. Snapshot and restore: keep the state after a shared prefix, answer from it twice. Same seed, same state: same text.
    Section("Snapshot and Restore");
    generator.Reset();
    generator.Append(tokenizer.Encode("In the beginning God created the heaven and the earth."));
    var snapshot = generator.Snapshot(); // a host copy; snapshot.Save(path) and StateSnapshot.Load(path, session.Manifest) keep it in a file
    string first = await TextOf(generator.GenerateAsync(tokenizer.Encode(" And"), options));
    generator.Restore(snapshot);
    string again = await TextOf(generator.GenerateAsync(tokenizer.Encode(" And"), options));
    Console.WriteLine($"first:            And{first}");
    Console.WriteLine($"after Restore:    And{again}");
    Check(first == again, "the same state and seed give the same text after Restore");

    // 5. Drive the loop yourself: Start, then Step for each token. Look at each token, append text mid-generation (a tool's
    //    answer, say), stop whenever you like: the state keeps exactly the tokens delivered.
    Section("Start and Step: your own loop, with an append mid-generation and an early stop");
    generator.Reset();
    var text = new StringBuilder("And Moses said");
    Console.Write(text);
    using (var run = generator.Start([tokenizer.Encode(text.ToString())], options with { StopStrings = [], MaxNewTokens = 48 }))
    {
        bool appended = false;
        while (run.Step(out var tokens))
        {
            string piece = tokens[0].Text;
            text.Append(piece);
            Console.Write(piece);
            if (!appended && piece.Contains(','))
            {
                const string aside = " [and Aaron answered]";
                run.Append(tokenizer.Encode(aside)); // read now, after the token just chosen; the next Step continues from it
                text.Append(aside);
                Console.Write(aside);
                appended = true;
            }
            if (piece.Contains('.')) break; // an early stop: the last token stays pending and is read first by what comes next
        }
        Console.WriteLine();
        Console.WriteLine($"[{run.Generated(0).Length} tokens generated, {(appended ? "one append" : "no append")}]");
    }

    // 6. IChatClient (Microsoft.Extensions.AI) over the serving engine: continuous batching and a prefix-state cache.
    Section("IChatClient");
    using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 2 });
    IChatClient chat = new XLstmChatClient(engine, "kjv-xlstm");
    var chatOptions = new ChatOptions { MaxOutputTokens = 32, Temperature = 0.8f, Seed = 1 };
    ChatResponse reply = await chat.GetResponseAsync("Who was Moses?", chatOptions);
    Console.WriteLine($"User: Who was Moses?\nAssistant: {reply.Text.Trim()}   [{reply.FinishReason}]");
    Check(reply.FinishReason is not null, "a reply says why it ended");
    Console.Write("User: And who was Aaron?\nAssistant:");
    List<ChatMessage> history = [new(ChatRole.User, "Who was Moses?"), reply.Messages[^1], new(ChatRole.User, "And who was Aaron?")];
    await foreach (var update in chat.GetStreamingResponseAsync(history, chatOptions)) Console.Write(update.Text);
    Console.WriteLine();
    return 0;
}
catch (XLstmOnnxException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}

// The text of a stream of tokens.
static async Task<string> TextOf(IAsyncEnumerable<GeneratedToken> tokens)
{
    var text = new StringBuilder();
    await foreach (var token in tokens) text.Append(token.Text);
    return text.ToString();
}

static void Section(string title) => Console.WriteLine($"\n== {title}");

static void Check(bool condition, string what)
{
    if (!condition) throw new XLstmOnnxException($"sample check failed: {what}.");
}
