using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using XLstmOnnx.Runtime.Generation;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Cli.Serving;

/// <summary>Limits of the HTTP API.</summary>
public sealed record ServerOptions
{
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 picks a free port (tests).</summary>
    public int Port { get; init; } = 8000;
    public string ModelId { get; init; } = "xlstm";
    public int MaxTokensLimit { get; init; } = 2048;
    public int MaxPromptTokens { get; init; } = 8192;
    public int MaxN { get; init; } = 8;
    /// <summary>
    /// Least level logged. Information (the default) writes one line per completion request (the request log); Warning
    /// keeps only refused and failed requests; Debug and Trace add ASP.NET Core's own logs.
    /// </summary>
    public LogLevel LogLevel { get; init; } = LogLevel.Information;
    /// <summary>Where the logs go; null: standard error, one line each.</summary>
    public ILoggerProvider? Logs { get; init; }
}

/// <summary>An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.</summary>
public sealed class ApiError(int status, string message, string? param = null, string type = "invalid_request_error", string? code = null) : Exception(message)
{
    public int Status => status;
    public object Body => new { error = new { message = Message, type, param, code } };
}

/// <summary>
/// OpenAI-compatible HTTP API over a <see cref="ServingEngine"/>: /v1/completions and /v1/chat/completions (JSON or
/// server-sent events), /v1/models, /health and /metrics (the engine's <see cref="ServingMetrics"/> in Prometheus' text
/// format, through OpenTelemetry's exporter). Bad requests get 4xx answers with OpenAI-style bodies; the engine keeps
/// serving everyone else. Every completion request is logged once it ends (category <see cref="RequestLogCategory"/>).
/// </summary>
public static partial class OpenAiServer
{
    /// <summary>The logger category of the request log.</summary>
    public const string RequestLogCategory = "XLstmOnnx.Serving.Requests";

    private static readonly JsonSerializerOptions Json = new()
    {
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping, // API JSON, not HTML: keep ' and non-ASCII readable
    };

    /// <summary>Largest request body accepted (a prompt of MaxPromptTokens fits easily).</summary>
    private const int MaxBodyBytes = 4 << 20;

    /// <summary>Starts the server; returns the app (dispose it to stop) and its base address.</summary>
    public static async Task<(WebApplication App, string Url)> StartAsync(ServingEngine engine, ServerOptions options)
    {
        var builder = WebApplication.CreateSlimBuilder();
        ConfigureLogging(builder.Logging, options);
        builder.WebHost.UseUrls($"http://{options.Host}:{options.Port}");
        engine.Metrics.ModelName ??= options.ModelId;
        builder.Services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService("xlstm-onnx"))
            .WithMetrics(m => m
                .AddMeter(ServingMetrics.MeterName)
                // this engine's instruments only: other engines in the process (tests, a host serving two models) have their own
                .AddView(i => ReferenceEquals(i.Meter, engine.Metrics.Meter) ? null : MetricStreamConfiguration.Drop)
                // no cached answers: a scrape right after a request sees it (the exporter caches for 300 ms by default)
                .AddPrometheusExporter(o => o.ScrapeResponseCacheDurationMilliseconds = 0));
        var app = builder.Build();
        var created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var log = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger(RequestLogCategory);

        app.MapGet("/health", () => Results.Json(new { status = "ok" }));
        app.MapPrometheusScrapingEndpoint("/metrics");
        app.MapGet("/v1/models", () => Results.Json(new
        {
            @object = "list",
            data = new[] { new { id = options.ModelId, @object = "model", created, owned_by = "xlstm-onnx" } },
        }));
        app.MapPost("/v1/completions", ctx => Handle(ctx, engine, options, log, chat: false));
        app.MapPost("/v1/chat/completions", ctx => Handle(ctx, engine, options, log, chat: true));
        await app.StartAsync().ConfigureAwait(false);
        string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return (app, url);
    }

    private static void ConfigureLogging(ILoggingBuilder logging, ServerOptions options)
    {
        logging.ClearProviders();
        if (options.Logs is { } provider)
        {
            logging.AddProvider(provider);
        }
        else
        {
            logging.AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace); // stdout stays free for the CLI's own output
            logging.AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.UseUtcTimestamp = true;
                o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ ";
            });
        }
        logging.SetMinimumLevel(options.LogLevel);
        // ASP.NET Core logs every request at Information too: below Debug, keep only its warnings and errors
        logging.AddFilter("Microsoft", options.LogLevel <= LogLevel.Debug ? options.LogLevel : (LogLevel)Math.Max((int)options.LogLevel, (int)LogLevel.Warning));
    }

    /// <summary>What the request log says about one request; filled in as the request runs.</summary>
    private sealed class RequestRecord
    {
        public string? Id;
        public int PromptTokens;
        public int CompletionTokens;
        public long FirstTokenAt;
        public string? Error;
    }

    [LoggerMessage(EventId = 1, Level = LogLevel.Information,
        Message = "{RequestId} {Route} {Status} prompt_tokens={PromptTokens} completion_tokens={CompletionTokens} ttft_ms={TtftMs} e2e_ms={E2eMs}")]
    private static partial void LogFinished(ILogger logger, string requestId, string route, int status, int promptTokens, int completionTokens, double ttftMs, double e2eMs);

    [LoggerMessage(EventId = 2, Level = LogLevel.Information,
        Message = "{RequestId} {Route} {Status} cancelled: the client went away after {CompletionTokens} tokens, e2e_ms={E2eMs}")]
    private static partial void LogCancelled(ILogger logger, string requestId, string route, int status, int completionTokens, double e2eMs);

    [LoggerMessage(EventId = 3, Level = LogLevel.Warning, Message = "{RequestId} {Route} {Status} {Error} e2e_ms={E2eMs}")]
    private static partial void LogRefused(ILogger logger, string requestId, string route, int status, string error, double e2eMs);

    private static void Log(ILogger log, HttpContext ctx, RequestRecord rec, long started)
    {
        string id = rec.Id ?? ctx.TraceIdentifier, route = ctx.Request.Path.Value ?? "";
        int status = ctx.Response.StatusCode;
        double e2e = Math.Round(Stopwatch.GetElapsedTime(started).TotalMilliseconds, 1);
        if (rec.Error is not null || status >= 400) LogRefused(log, id, route, status, rec.Error ?? "", e2e);
        else if (ctx.RequestAborted.IsCancellationRequested) LogCancelled(log, id, route, status, rec.CompletionTokens, e2e);
        else
        {
            double ttft = rec.FirstTokenAt == 0 ? double.NaN : Math.Round(Stopwatch.GetElapsedTime(started, rec.FirstTokenAt).TotalMilliseconds, 1);
            LogFinished(log, id, route, status, rec.PromptTokens, rec.CompletionTokens, ttft, e2e);
        }
    }

    private static async Task Handle(HttpContext ctx, ServingEngine engine, ServerOptions options, ILogger log, bool chat)
    {
        long started = Stopwatch.GetTimestamp();
        var rec = new RequestRecord();
        try
        {
            JsonElement body;
            using (var buffer = new MemoryStream())
            {
                await ctx.Request.Body.CopyToAsync(buffer, ctx.RequestAborted).ConfigureAwait(false);
                if (buffer.Length > MaxBodyBytes) throw new ApiError(413, $"The request body has {buffer.Length} bytes; at most {MaxBodyBytes} are accepted.");
                // JsonDocument only checks string contents when they are read: check the whole body first
                if (!System.Text.Unicode.Utf8.IsValid(buffer.GetBuffer().AsSpan(0, (int)buffer.Length))) throw new ApiError(400, "The request body is not valid UTF-8.");
                try
                {
                    using var doc = JsonDocument.Parse(buffer.GetBuffer().AsMemory(0, (int)buffer.Length));
                    body = doc.RootElement.Clone();
                }
                catch (JsonException e)
                {
                    throw new ApiError(400, $"The request body is not valid JSON: {e.Message}");
                }
            }
            if (body.ValueKind != JsonValueKind.Object) throw new ApiError(400, "The request body must be a JSON object.");
            var req = Parse(body, engine, options, chat);
            rec.PromptTokens = req.Prompt.Length * req.N;
            await (req.Stream ? Stream(ctx, engine, req, chat, rec) : Respond(ctx, engine, req, chat, rec)).ConfigureAwait(false);
        }
        catch (ApiError e)
        {
            rec.Error = e.Message;
            ctx.Response.StatusCode = e.Status;
            await ctx.Response.WriteAsJsonAsync(e.Body, Json).ConfigureAwait(false);
        }
        catch (XLstmOnnxException e)
        {
            rec.Error = e.Message;
            ctx.Response.StatusCode = 400;
            await ctx.Response.WriteAsJsonAsync(new ApiError(400, e.Message).Body, Json).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException && !ctx.Response.HasStarted)
        {
            rec.Error = $"internal error: {e.Message}";
            ctx.Response.StatusCode = 500;
            await ctx.Response.WriteAsJsonAsync(new ApiError(500, $"internal error: {e.Message}", type: "server_error").Body, Json).ConfigureAwait(false);
        }
        finally
        {
            Log(log, ctx, rec, started);
        }
    }

    /// <param name="TokenIds">vLLM's <c>return_token_ids</c>: each choice also carries the ids it generated (models without a tokenizer, tests).</param>
    private sealed record Request(int[] Prompt, GenerationOptions Options, int N, bool Stream, string Model, bool TokenIds);

    private static Request Parse(JsonElement b, ServingEngine engine, ServerOptions o, bool chat)
    {
        var tokenizer = engine.Session.Tokenizer;
        string model = Str(b, "model") ?? throw new ApiError(400, "you must provide a model parameter", "model");
        if (model != o.ModelId) throw new ApiError(404, $"The model '{model}' does not exist; this server serves '{o.ModelId}'.", "model", "invalid_request_error", "model_not_found");
        int[] prompt;
        var stops = new List<string>();
        if (chat)
        {
            if (!b.TryGetProperty("messages", out var ms) || ms.ValueKind != JsonValueKind.Array || ms.GetArrayLength() == 0)
            {
                throw new ApiError(400, "'messages' must be a non-empty array of {role, content}.", "messages");
            }
            var list = new List<(string, string)>();
            foreach (var m in ms.EnumerateArray())
            {
                string role = m.ValueKind == JsonValueKind.Object ? Str(m, "role") ?? "" : "";
                if (!ChatTemplate.Roles.Contains(role)) throw new ApiError(400, $"message role must be system, user or assistant; found \"{role}\".", "messages");
                string content = Str(m, "content") ?? throw new ApiError(400, "every message needs a string 'content'.", "messages");
                list.Add((role, content));
            }
            prompt = (tokenizer ?? throw new ApiError(400, "this model has no tokenizer; use /v1/completions with token ids.")).Encode(ChatTemplate.Render(list));
            stops.Add(ChatTemplate.StopString);
        }
        else
        {
            if (!b.TryGetProperty("prompt", out var p)) throw new ApiError(400, "you must provide a prompt", "prompt");
            if (p.ValueKind == JsonValueKind.String)
            {
                prompt = (tokenizer ?? throw new ApiError(400, "this model has no tokenizer; give the prompt as token ids.", "prompt")).Encode(p.GetString()!);
            }
            else if (p.ValueKind == JsonValueKind.Array && p.EnumerateArray().All(x => x.ValueKind == JsonValueKind.Number))
            {
                long vocab = engine.Session.Manifest.VocabSize;
                prompt = p.EnumerateArray().Select(x => x.TryGetInt32(out int id) && id >= 0 && id < vocab ? id
                    : throw new ApiError(400, $"token id {x.GetRawText()} is not in [0, {vocab}).", "prompt")).ToArray();
            }
            else throw new ApiError(400, "'prompt' must be a string or an array of token ids.", "prompt");
        }
        if (prompt.Length == 0) throw new ApiError(400, "the prompt is empty.", chat ? "messages" : "prompt");
        if (prompt.Length > o.MaxPromptTokens)
        {
            throw new ApiError(400, $"The prompt has {prompt.Length} tokens; this server takes at most {o.MaxPromptTokens}.", chat ? "messages" : "prompt", code: "context_length_exceeded");
        }
        int maxTokens = Int(b, "max_tokens") ?? Int(b, "max_completion_tokens") ?? (chat ? 256 : 16);
        if (maxTokens < 1 || maxTokens > o.MaxTokensLimit) throw new ApiError(400, $"'max_tokens' must be between 1 and {o.MaxTokensLimit}; found {maxTokens}.", "max_tokens");
        double temperature = Num(b, "temperature") ?? 1.0;
        if (temperature < 0 || temperature > 2) throw new ApiError(400, $"'temperature' must be between 0 and 2; found {temperature}.", "temperature");
        double topP = Num(b, "top_p") ?? 1.0;
        if (!(topP > 0 && topP <= 1)) throw new ApiError(400, $"'top_p' must be in (0, 1]; found {topP}.", "top_p");
        int n = Int(b, "n") ?? 1;
        if (n < 1 || n > o.MaxN) throw new ApiError(400, $"'n' must be between 1 and {o.MaxN}; found {n}.", "n");
        if (b.TryGetProperty("stop", out var st) && st.ValueKind != JsonValueKind.Null)
        {
            if (st.ValueKind == JsonValueKind.String) stops.Add(st.GetString()!);
            else if (st.ValueKind == JsonValueKind.Array && st.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String) && st.GetArrayLength() <= 4) stops.AddRange(st.EnumerateArray().Select(x => x.GetString()!));
            else throw new ApiError(400, "'stop' must be a string or an array of at most 4 strings.", "stop");
            if (stops.Any(string.IsNullOrEmpty)) throw new ApiError(400, "'stop' strings must not be empty.", "stop");
        }
        long? seed = b.TryGetProperty("seed", out var sd) && sd.ValueKind != JsonValueKind.Null
            ? (sd.TryGetInt64(out long v) ? v : throw new ApiError(400, "'seed' must be an integer.", "seed")) : null;
        bool stream = b.TryGetProperty("stream", out var sm) && sm.ValueKind == JsonValueKind.True;
        // vLLM's extension: keep generating past the end-of-text token (benchmarks, tests)
        bool ignoreEos = b.TryGetProperty("ignore_eos", out var ie) && ie.ValueKind == JsonValueKind.True;
        bool tokenIds = b.TryGetProperty("return_token_ids", out var ti) && ti.ValueKind == JsonValueKind.True;
        var options = new GenerationOptions
        {
            MaxNewTokens = maxTokens,
            Greedy = temperature == 0,
            Temperature = temperature == 0 ? 1.0 : temperature,
            TopP = topP,
            Seed = seed is { } s ? unchecked((ulong)s) : (ulong)Random.Shared.NextInt64(),
            StopStrings = stops,
            IgnoreEos = ignoreEos,
        };
        return new Request(prompt, options, n, stream, model, tokenIds);
    }

    /// <summary>Submits the n choices; choice i samples with seed + i.</summary>
    private static ChannelReader<(int Index, CompletionEvent Event)> Submit(ServingEngine engine, Request r, CancellationToken cancel)
    {
        if (engine.Options.QueueCapacity - engine.Metrics.QueueDepth < r.N && r.N > 1)
        {
            throw new ApiError(429, "The server is busy: too many requests are waiting; retry later.", type: "rate_limit_error", code: "rate_limit_exceeded");
        }
        var readers = new List<ChannelReader<CompletionEvent>>();
        try
        {
            for (int i = 0; i < r.N; i++) readers.Add(engine.Submit(r.Prompt, r.Options with { Seed = r.Options.Seed + (ulong)i }, cancel));
        }
        catch (QueueFullException e)
        {
            throw new ApiError(429, $"The server is busy: {e.Message}.", type: "rate_limit_error", code: "rate_limit_exceeded");
        }
        var merged = Channel.CreateUnbounded<(int, CompletionEvent)>();
        int open = readers.Count;
        for (int i = 0; i < readers.Count; i++)
        {
            int index = i;
            _ = Task.Run(async () =>
            {
                Exception? error = null;
                try
                {
                    await foreach (var e in readers[index].ReadAllAsync(CancellationToken.None).ConfigureAwait(false)) await merged.Writer.WriteAsync((index, e)).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    error = e;
                }
                if (error is not null) merged.Writer.TryComplete(error);
                else if (Interlocked.Decrement(ref open) == 0) merged.Writer.TryComplete();
            });
        }
        return merged.Reader;
    }

    private static string Finish(StopReason r) => ServingMetrics.FinishReason(r);

    private static async Task Respond(HttpContext ctx, ServingEngine engine, Request r, bool chat, RequestRecord rec)
    {
        var texts = Enumerable.Range(0, r.N).Select(_ => new StringBuilder()).ToArray();
        var ids = Enumerable.Range(0, r.N).Select(_ => new List<int>()).ToArray();
        var finish = new string?[r.N];
        int completion = 0;
        string id = rec.Id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        await foreach (var (i, e) in Submit(engine, r, ctx.RequestAborted).ReadAllAsync(ctx.RequestAborted).ConfigureAwait(false))
        {
            if (completion == 0) rec.FirstTokenAt = Stopwatch.GetTimestamp();
            texts[i].Append(e.Text);
            ids[i].Add(e.Token);
            rec.CompletionTokens = ++completion;
            if (e.Finish != StopReason.None) finish[i] = Finish(e.Finish);
        }
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var usage = new { prompt_tokens = r.Prompt.Length * r.N, completion_tokens = completion, total_tokens = r.Prompt.Length * r.N + completion };
        object body = chat
            ? new
            {
                id, @object = "chat.completion", created, model = r.Model, usage,
                choices = Enumerable.Range(0, r.N).Select(i => new { index = i, message = new { role = "assistant", content = texts[i].ToString() }, finish_reason = finish[i] }),
            }
            : new
            {
                id, @object = "text_completion", created, model = r.Model, usage,
                choices = Enumerable.Range(0, r.N).Select(i => new { index = i, text = texts[i].ToString(), logprobs = (object?)null, finish_reason = finish[i], token_ids = r.TokenIds ? ids[i] : null }),
            };
        await ctx.Response.WriteAsJsonAsync(body, Json).ConfigureAwait(false);
    }

    private static async Task Stream(HttpContext ctx, ServingEngine engine, Request r, bool chat, RequestRecord rec)
    {
        var events = Submit(engine, r, ctx.RequestAborted); // 429 is still answered as JSON
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        string id = rec.Id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var started = new bool[r.N];
        try
        {
            await foreach (var (i, e) in events.ReadAllAsync(ctx.RequestAborted).ConfigureAwait(false))
            {
                if (rec.CompletionTokens++ == 0) rec.FirstTokenAt = Stopwatch.GetTimestamp();
                string? reason = e.Finish == StopReason.None ? null : Finish(e.Finish);
                object chunk = chat
                    ? new
                    {
                        id, @object = "chat.completion.chunk", created, model = r.Model,
                        choices = new[] { new { index = i, delta = started[i] ? new { role = (string?)null, content = e.Text } : new { role = (string?)"assistant", content = e.Text }, finish_reason = reason } },
                    }
                    : new { id, @object = "text_completion", created, model = r.Model, choices = new[] { new { index = i, text = e.Text, logprobs = (object?)null, finish_reason = reason, token_ids = r.TokenIds ? new[] { e.Token } : null } } };
                started[i] = true;
                await ctx.Response.WriteAsync("data: " + JsonSerializer.Serialize(chunk, Json) + "\n\n", ctx.RequestAborted).ConfigureAwait(false);
                await ctx.Response.Body.FlushAsync(ctx.RequestAborted).ConfigureAwait(false);
            }
            await ctx.Response.WriteAsync("data: [DONE]\n\n", ctx.RequestAborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            // the client went away; the engine frees its slot at the next step
        }
    }

    private static string? Str(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) ? v.ValueKind == JsonValueKind.String ? v.GetString() : v.ValueKind == JsonValueKind.Null ? null
            : throw new ApiError(400, $"'{name}' must be a string; found {v.ValueKind}.", name) : null;

    private static int? Int(JsonElement e, string name)
    {
        if (!e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long l)) return l > int.MaxValue ? int.MaxValue : l < int.MinValue ? int.MinValue : (int)l;
        throw new ApiError(400, $"'{name}' must be an integer; found {v.GetRawText()}.", name);
    }

    private static double? Num(JsonElement e, string name)
    {
        if (!e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.Number) return v.GetDouble();
        throw new ApiError(400, $"'{name}' must be a number; found {v.GetRawText()}.", name);
    }
}
