using System.CommandLine;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using XLstmOnnx.Cli.Serving;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Cli;

/// <summary><c>xlstm-onnx serve --model DIR [--device cpu|cuda] [--port N] [--max-batch N]</c>: an OpenAI-compatible server on loopback
/// (beyond it with <c>--allow-remote</c>; <c>--api-key</c> and <c>--allowed-origins</c> say who may use it: <see cref="ServerAccess"/>).</summary>
internal static class ServeCommand
{
    /// <summary>The environment variable <c>--api-key</c> defaults to (serve and loadtest).</summary>
    public const string ApiKeyVariable = "XLSTM_API_KEY";
    /// <summary>The environment variable <c>--internal-token</c> defaults to.</summary>
    public const string InternalTokenVariable = "XLSTM_INTERNAL_TOKEN";

    public static Command Create()
    {
        var model = new ModelOptions();
        var host = new Option<string>("--host") { Description = "IP address to listen on, or localhost; beyond loopback only with --allow-remote.", DefaultValueFactory = _ => "127.0.0.1" };
        var allowRemote = new Option<bool>("--allow-remote") { Description = "Allow a --host beyond loopback (0.0.0.0, ::, an interface's address): any machine that reaches it can use the API; give --api-key too." };
        var apiKey = new Option<string?>("--api-key") { Description = $"Require 'Authorization: Bearer KEY' on every request but /health (default: ${ApiKeyVariable}, which keeps the key out of the process list)." };
        var origins = new Option<string?>("--allowed-origins") { Description = "Comma-separated browser origins (https://app.example.com, or *) that may call the API besides loopback pages; others get 403." };
        var port = new Option<int>("--port") { Description = "Port (0: any free one).", DefaultValueFactory = _ => 8000 };
        var maxBatch = new Option<int>("--max-batch") { Description = "Slots of the decode state pool: sequences decoded together at most.", DefaultValueFactory = _ => 8 };
        var queue = new Option<int>("--queue") { Description = "Requests that may wait; more get 429.", DefaultValueFactory = _ => 64 };
        var cacheMb = new Option<int?>("--prefix-cache-mb") { Description = "Device memory for cached prefix states (0: off; default: two states per slot, at most a quarter of the free GPU memory, 1 GiB on the CPU)." };
        var prefillRows = new Option<int>("--prefill-rows") { Description = "Prompts read at the same time (each in its own row of state).", DefaultValueFactory = _ => 8 };
        var prefillChunk = new Option<int?>("--prefill-chunk") { Description = "Longest prompt piece read between decode steps while others decode (default: paced so prefill takes at most 0.9 of a step's time)." };
        var gather = new Option<int>("--prefill-gather-steps") { Description = "Decode steps a short prompt may wait to be read together with others (0: at once).", DefaultValueFactory = _ => 0 };
        var buckets = new Option<string?>("--decode-buckets") { Description = "Batch sizes a decode step runs at, e.g. 1,8,64 (default: powers of two up to --max-batch, and --max-batch)." };
        var mixedSteps = new Option<string>("--mixed-steps")
        {
            Description = "Read prompts inside decode steps through the model's mixed graph (export --mixed-graph): auto (when the model has it and runs on CUDA), on or off.",
            DefaultValueFactory = _ => "auto",
        };
        mixedSteps.AcceptOnlyFromAmong("auto", "on", "off");
        var padPrompts = new Option<string>("--pad-prompts")
        {
            Description = "Pad each prompt on the left to whole chunks (masked positions) so the mLSTM cell reads it in chunks only, never in recurrent steps: auto (on CUDA), on or off.",
            DefaultValueFactory = _ => "auto",
        };
        padPrompts.AcceptOnlyFromAmong("auto", "on", "off");
        var mixedRows = new Option<int>("--mixed-prompt-rows") { Description = "Prompts one mixed step reads at most when several wait (with prompts padded to whole chunks; else 1): 2 serves a little more and answers first tokens later.", DefaultValueFactory = _ => 1 };
        var maxPrompt = new Option<int>("--max-prompt-tokens") { Description = "Longest prompt accepted (400 above it).", DefaultValueFactory = _ => 8192 };
        var maxTokens = new Option<int>("--max-tokens-limit") { Description = "Largest max_tokens accepted (400 above it).", DefaultValueFactory = _ => 2048 };
        var internalToken = new Option<string?>("--internal-token") { Description = $"Enable the prefix hand-off endpoints (/internal/prefix/export and /import) for requests that carry this token in X-Internal-Token (default: ${InternalTokenVariable}; off when neither is set)." };
        var name = new Option<string?>("--model-name") { Description = "Model id in the API (default: the folder's name)." };
        var logLevel = ChoiceOption.ForEnum("--log-level", "Least level logged to stderr: information writes one line per request; warning only refused and failed ones.", LogLevel.Information);
        var cmd = new Command("serve", "OpenAI-compatible HTTP server with continuous batching and a prefix-state cache.")
            { host, port, allowRemote, apiKey, origins, maxBatch, queue, cacheMb, prefillRows, prefillChunk, gather, buckets, mixedSteps, padPrompts, mixedRows, maxPrompt, maxTokens, name, internalToken, logLevel };
        model.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            // megabytes here, bytes in ServingOptions: this flag's range is checked in its own unit
            if (r.GetValue(cacheMb) is < 0) throw new XLstmOnnxException($"option --prefix-cache-mb must be 0 (off) or positive; found {r.GetValue(cacheMb)}.");
            var bucketList = r.GetValue(buckets) is { } list ? SamplingOptions.ParseIds(list, "--decode-buckets") : null;
            if (bucketList is { Length: 0 }) throw new XLstmOnnxException($"option --decode-buckets: give at least one size; found \"{r.GetValue(buckets)}\".");
            var serving = new ServingOptions
            {
                MaxBatch = r.GetValue(maxBatch),
                QueueCapacity = r.GetValue(queue),
                PrefixCacheBytes = r.GetValue(cacheMb) is { } mb ? (long)mb << 20 : null,
                PrefillRows = r.GetValue(prefillRows),
                PrefillChunkTokens = r.GetValue(prefillChunk),
                PrefillGatherSteps = r.GetValue(gather),
                DecodeBuckets = bucketList,
                MixedSteps = r.GetValue(mixedSteps) switch { "on" => true, "off" => false, _ => null },
                PadPrompts = r.GetValue(padPrompts) switch { "on" => true, "off" => false, _ => null },
                MixedPromptRows = r.GetValue(mixedRows),
            };
            serving.Validate(); // before the model loads
            var options = new ServerOptions
            {
                Host = r.GetValue(host)!,
                Port = r.GetValue(port),
                AllowRemote = r.GetValue(allowRemote),
                ApiKey = r.GetValue(apiKey) ?? (Environment.GetEnvironmentVariable(ApiKeyVariable) is { Length: > 0 } key ? key : null),
                AllowedOrigins = r.GetValue(origins)?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) ?? [],
                ModelId = r.GetValue(name) ?? Path.GetFileName(Path.GetFullPath(r.GetValue(model.Model)!).TrimEnd('/')),
                MaxPromptTokens = r.GetValue(maxPrompt),
                MaxTokensLimit = r.GetValue(maxTokens),
                LogLevel = r.GetValue(logLevel),
                InternalToken = r.GetValue(internalToken) ?? (Environment.GetEnvironmentVariable(InternalTokenVariable) is { Length: > 0 } it ? it : null),
            };
            var address = options.Validate(); // so is where it listens
            if (address is not null && !System.Net.IPAddress.IsLoopback(address) && options.ApiKey is null)
            {
                Console.Error.WriteLine($"serve: warning: listening on {options.Host} without --api-key: anyone who reaches this machine can use the API.");
            }
            using var session = model.Load(r);
            Console.Error.WriteLine("serve: allocating the state pool" + (session.Options.CudaGraph ? " and capturing a CUDA graph per decode batch size" : "") + " ...");
            using var engine = new ServingEngine(session, serving);
            if (session.MixedCaptureError is { } why) Console.Error.WriteLine($"serve: warning: the mixed graph runs without CUDA graphs: {why}");
            if (engine.MixedStepsError is { } error) Console.Error.WriteLine($"serve: warning: prompts are read between decode steps; the mixed graph could not be opened: {error}");
            var (app, url) = OpenAiServer.StartAsync(engine, options).GetAwaiter().GetResult();
            Console.Error.WriteLine($"serving '{options.ModelId}' on {url} (OpenAI API under /v1; /health, /metrics); {engine.Options.MaxBatch} slots, "
                + $"decode batch sizes {string.Join(",", engine.Options.Buckets())}, prefix cache {engine.Metrics.CacheCapacity} states, "
                + $"prompts read {(engine.MixedSteps ? "inside decode steps (mixed graph)" : "between decode steps")}{(engine.PadPrompts ? " in whole chunks" : "")}; Ctrl+C stops");
            app.WaitForShutdownAsync().GetAwaiter().GetResult();
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 0;
        }));
        return cmd;
    }
}
