using System.Diagnostics;
using System.Globalization;
using System.Net;
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

/// <summary>Where the HTTP API listens, who may use it, and its limits.</summary>
public sealed record ServerOptions
{
    /// <summary>
    /// The address to listen on: an IP address (127.0.0.1, ::1; 0.0.0.0 or :: for every interface) or <c>localhost</c>.
    /// Anything else is refused (a name that is not an address would make Kestrel listen on every interface), and so is
    /// an address beyond loopback without <see cref="AllowRemote"/>.
    /// </summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 picks a free port (tests).</summary>
    public int Port { get; init; } = 8000;
    /// <summary>
    /// Allows a <see cref="Host"/> beyond loopback. Off (the default), the server listens on loopback only and refuses
    /// requests whose Host header is not a loopback name (DNS rebinding).
    /// </summary>
    public bool AllowRemote { get; init; }
    /// <summary>
    /// When set, every request but <c>GET /health</c> must carry <c>Authorization: Bearer {ApiKey}</c>; others get 401
    /// (vLLM's and llama.cpp's <c>--api-key</c>). Printable ASCII without spaces.
    /// </summary>
    public string? ApiKey { get; init; }
    /// <summary>
    /// Browser origins (<c>scheme://host[:port]</c>, or <c>*</c> for any) allowed besides loopback ones: a request with
    /// any other Origin header gets 403, and these get CORS headers (preflight included).
    /// </summary>
    public IReadOnlyList<string> AllowedOrigins { get; init; } = [];
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
    /// <summary>
    /// When set, the prefix hand-off endpoints (docs/routing.md, "Handing a state over": <c>/internal/prefix/export</c>,
    /// <c>/internal/prefix/import</c>) answer requests that carry it in <see cref="OpenAiServer.InternalTokenHeader"/>;
    /// when not, they do not exist.
    /// </summary>
    public string? InternalToken { get; init; }

    /// <summary>The name errors give a property (<c>ServerOptions.Host</c>); the CLI maps it to its flag.</summary>
    public static string Name(string property) => $"{nameof(ServerOptions)}.{property}";

    /// <summary>
    /// Checks the address, port, key and origins (<see cref="XLstmOnnxException"/> naming the property, the rule and the
    /// value); returns the address to listen on, null for <c>localhost</c>.
    /// </summary>
    public IPAddress? Validate()
    {
        var address = ServerAccess.ParseHost(Host, Name(nameof(Host)));
        if (address is not null && !IPAddress.IsLoopback(address) && !AllowRemote)
        {
            throw XLstmOnnxException.InParameter(Name(nameof(Host)),
                $"{Name(nameof(Host))} {Host} is beyond loopback: every machine that reaches this one could use the API. "
                + $"Give {Name(nameof(AllowRemote))} to mean it (and {Name(nameof(ApiKey))} to require a key), or listen on 127.0.0.1.");
        }
        if (Port is < 0 or > 65535) throw XLstmOnnxException.MustBe(Name(nameof(Port)), "between 0 and 65535 (0: any free port)", Port);
        if (ApiKey is { } key && (key.Length == 0 || key.Any(c => c is < '!' or > '~')))
        {
            // the key itself is a secret: say what is wrong with it, not what it is
            throw XLstmOnnxException.InParameter(Name(nameof(ApiKey)),
                $"{Name(nameof(ApiKey))} must be printable ASCII without spaces (an HTTP header carries it); found {(key.Length == 0 ? "an empty key" : $"a key of {key.Length} characters with a space, control or non-ASCII character")}.");
        }
        foreach (string origin in AllowedOrigins) _ = ServerAccess.NormalizeOrigin(origin, Name(nameof(AllowedOrigins)));
        return address;
    }
}

/// <summary>An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.</summary>
public sealed class ApiError(int status, string message, string? param = null, string type = "invalid_request_error", string? code = null) : Exception(message)
{
    public int Status => status;
    public object Body => new { error = new { message = Message, type, param, code } };
}

/// <summary>
/// OpenAI-compatible HTTP API over a <see cref="ServingEngine"/>: /v1/completions and /v1/chat/completions (JSON or
/// server-sent events; request fields: <see cref="OpenAiRequest"/>), /v1/models and /v1/models/{id}, vLLM's /tokenize and
/// /detokenize, /health and /metrics (the engine's <see cref="ServingMetrics"/> in Prometheus' text format, through
/// OpenTelemetry's exporter). Bad requests and unknown routes get 4xx answers with OpenAI-style bodies; the engine keeps
/// serving everyone else. Who may use it (the address, Host and Origin rules, CORS, the API key): <see cref="ServerAccess"/>.
/// Bodies above 4 MiB get 413; a full queue 429 with Retry-After. The seed a request sampled with is in the <see cref="SeedHeader"/> response header. Every completion request is logged once it ends (category <see cref="RequestLogCategory"/>).
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
        var address = options.Validate();
        // the content root is the tool's folder: an appsettings.json in the working directory adds no endpoints
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        ConfigureLogging(builder.Logging, options);
        builder.WebHost.ConfigureKestrel(k =>
        {
            // Kestrel's own limit (30 MB) would end the read with an exception; at ours the read ends with a 413
            k.Limits.MaxRequestBodySize = MaxBodyBytes;
            ServerAccess.Listen(k, address, options.Port);
        });
        ServerAccess.AddCors(builder.Services, options);
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
        ServerAccess.Use(app, options, loopbackOnly: address is null || IPAddress.IsLoopback(address), Json, log);

        // an unknown route (404) or method (405) answers OpenAI's error shape, never an empty body
        app.UseStatusCodePages(async context =>
        {
            var http = context.HttpContext;
            string what = http.Response.StatusCode == 405 ? $"Method {http.Request.Method} is not allowed on {http.Request.Path}" : $"Unknown route: {http.Request.Method} {http.Request.Path}";
            await http.Response.WriteAsJsonAsync(new ApiError(http.Response.StatusCode, what, type: "invalid_request_error", code: http.Response.StatusCode == 405 ? "method_not_allowed" : "not_found").Body, Json).ConfigureAwait(false);
        });
        // OpenAI's model object, plus the vocabulary size (an extension, as vLLM adds max_model_len): token-id prompts
        // (loadtest --prompt-tokens, a client without the tokenizer) need to know the valid ids
        var modelInfo = new { id = options.ModelId, @object = "model", created, owned_by = "xlstm-onnx", vocab_size = engine.Session.Manifest.VocabSize };
        var drain = new DrainSwitch();
        app.MapGet("/health", (HttpContext ctx) => Health(ctx, engine, drain));
        app.MapPrometheusScrapingEndpoint("/metrics");
        app.MapGet("/v1/models", () => Results.Json(new { @object = "list", data = new[] { modelInfo } }));
        app.MapGet("/v1/models/{**id}", (string id) => id == options.ModelId ? Results.Json(modelInfo)
            : Results.Json(new ApiError(404, $"The model '{id}' does not exist; this server serves '{options.ModelId}'.", "model", code: "model_not_found").Body, Json, statusCode: 404));
        app.MapPost("/v1/completions", ctx => Handle(ctx, engine, options, log, chat: false));
        app.MapPost("/v1/chat/completions", ctx => Handle(ctx, engine, options, log, chat: true));
        // vLLM's tokenizer endpoints
        app.MapPost("/tokenize", ctx => Answer(ctx, body =>
        {
            var ids = OpenAiRequest.Tokenize(body, engine, options, out bool strs);
            var tokens = new TokenText(engine.Session.Tokenizer);
            return new { count = ids.Length, max_model_len = options.MaxPromptTokens, tokens = ids, token_strs = strs ? ids.Select(i => tokens.Of(i).Text).ToArray() : null };
        }));
        app.MapPost("/detokenize", ctx => Answer(ctx, body => new { prompt = OpenAiRequest.Detokenize(body, engine, options) }));
        if (options.InternalToken is { } token) MapInternal(app, engine, options, token, drain);
        try
        {
            await app.StartAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException)
        {
            // a port in use or not ours to take: the option and the reason, no stack
            await app.DisposeAsync().ConfigureAwait(false);
            throw XLstmOnnxException.InParameter(ServerOptions.Name(nameof(ServerOptions.Port)),
                $"{ServerOptions.Name(nameof(ServerOptions.Port))} {options.Port}: cannot listen on {options.Host}: {(e.InnerException ?? e).Message}", e);
        }
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
        // the host logs a failed start (a port in use) with its stack; StartAsync reports it as an error of --port instead
        if (options.LogLevel > LogLevel.Debug) logging.AddFilter("Microsoft.Extensions.Hosting.Internal.Host", LogLevel.None);
    }

    /// <summary>The request body as a JSON object; 4xx ApiErrors for what is not.</summary>
    private static async Task<JsonElement> ReadBody(HttpContext ctx)
    {
        if (ctx.Request.ContentLength > MaxBodyBytes) throw TooLarge(ctx, $"The request body has {ctx.Request.ContentLength} bytes; at most {MaxBodyBytes} are accepted.");
        using var buffer = new MemoryStream();
        try
        {
            await ctx.Request.Body.CopyToAsync(buffer, ctx.RequestAborted).ConfigureAwait(false);
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            throw TooLarge(ctx, $"The request body has more than {MaxBodyBytes} bytes; at most {MaxBodyBytes} are accepted.");
        }
        catch (BadHttpRequestException e)
        {
            throw new ApiError(e.StatusCode, $"The request body could not be read: {e.Message}");
        }
        if (buffer.Length > MaxBodyBytes) throw TooLarge(ctx, $"The request body has {buffer.Length} bytes; at most {MaxBodyBytes} are accepted.");
        // JsonDocument only checks string contents when they are read: check the whole body first
        if (!System.Text.Unicode.Utf8.IsValid(buffer.GetBuffer().AsSpan(0, (int)buffer.Length))) throw new ApiError(400, "The request body is not valid UTF-8.");
        JsonElement body;
        try
        {
            using var doc = JsonDocument.Parse(buffer.GetBuffer().AsMemory(0, (int)buffer.Length));
            body = doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new ApiError(400, $"The request body is not valid JSON: {e.Message}");
        }
        if (body.ValueKind != JsonValueKind.Object) throw new ApiError(400, "The request body must be a JSON object.");
        if (LoneSurrogate(body) is { } at)
        {
            throw new ApiError(400, $"The request body is not valid Unicode: the string at {at} has a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair).", at.StartsWith('(') ? null : at.Split('.', '[')[0]);
        }
        return body;
    }

    /// <summary>The 413 answer; the connection closes after it, so that Kestrel does not read the rest of the body.</summary>
    private static ApiError TooLarge(HttpContext ctx, string message)
    {
        ctx.Response.Headers.Connection = "close";
        return new ApiError(413, message, code: "request_too_large");
    }

    /// <summary>
    /// The path (<c>messages[0].content</c>) of the first string or property name whose escapes do not make UTF-16 text
    /// (<c>"\ud800"</c> alone): the JSON parser accepts them, and reading the string throws. Null when there is none.
    /// </summary>
    private static string? LoneSurrogate(JsonElement e)
    {
        static bool Readable(Func<string?> read)
        {
            try
            {
                _ = read();
                return true;
            }
            catch (InvalidOperationException)
            {
                return false;
            }
        }
        switch (e.ValueKind)
        {
            case JsonValueKind.String:
                return Readable(e.GetString) ? null : "";
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    if (!Readable(() => p.Name)) return "(a property name)";
                    if (LoneSurrogate(p.Value) is { } inner) return p.Name + (inner.Length == 0 || inner[0] == '[' ? inner : "." + inner);
                }
                return null;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var x in e.EnumerateArray())
                {
                    if (LoneSurrogate(x) is { } inner) return $"[{i}]" + (inner.Length == 0 || inner[0] == '[' ? inner : "." + inner);
                    i++;
                }
                return null;
            default:
                return null;
        }
    }

    /// <summary>The request header that carries <see cref="ServerOptions.InternalToken"/>.</summary>
    public const string InternalTokenHeader = "X-Internal-Token";

    /// <summary>Where the export and import answers say what their parts took (device copies, serializing, reading the body), in milliseconds.</summary>
    public const string HandOffTimingHeader = "X-Prefix-Timing";

    /// <summary>The export's response header that says how many prompt tokens the state covers.</summary>
    public const string PrefixTokensHeader = "X-Prefix-Tokens";

    /// <summary>Largest prefix state accepted by the import endpoint (a 7B state is 134 MB); it is read into one array.</summary>
    private const long MaxHandOffBytes = 1L << 30;

    /// <summary>
    /// The prefix hand-off (docs/routing.md, "Handing a state over"): <c>POST /internal/prefix/export</c> with a prompt
    /// (<see cref="OpenAiRequest.PromptIds"/>: text or ids as the completions API reads them, or chat messages) answers the state of its longest cached prefix as safetensors
    /// (<see cref="PrefixHandOff"/>), or 404; <c>POST /internal/prefix/import</c> with such a file stores it in this
    /// server's prefix cache; <c>POST /internal/drain</c> starts draining (docs/routing.md, "Draining a replica") and
    /// <c>DELETE /internal/drain</c> ends it. All need the internal token; a wrong or missing one gets 401.
    /// </summary>
    private static void MapInternal(WebApplication app, ServingEngine engine, ServerOptions options, string token, DrainSwitch drain)
    {
        // one gate for every /internal route
        byte[] expected = Encoding.UTF8.GetBytes(token);
        app.UseWhen(ctx => ctx.Request.Path.StartsWithSegments("/internal"), gate => gate.Use(async (ctx, next) =>
        {
            if (System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(ctx.Request.Headers[InternalTokenHeader].ToString()), expected))
            {
                await next(ctx).ConfigureAwait(false);
                return;
            }
            ctx.Response.StatusCode = 401;
            await ctx.Response.WriteAsJsonAsync(new ApiError(401, $"The {InternalTokenHeader} header is missing or wrong.", type: "invalid_request_error", code: "invalid_internal_token").Body, Json).ConfigureAwait(false);
        }));
        app.MapMethods("/internal/drain", [HttpMethods.Post, HttpMethods.Delete], async ctx =>
        {
            drain.Draining = HttpMethods.IsPost(ctx.Request.Method);
            await ctx.Response.WriteAsJsonAsync(new { draining = drain.Draining }, Json).ConfigureAwait(false);
        });
        app.MapPost("/internal/prefix/export", async ctx =>
        {
            int[] ids;
            try
            {
                ids = OpenAiRequest.PromptIds(await ReadBody(ctx).ConfigureAwait(false), engine, options);
            }
            catch (ApiError e)
            {
                ctx.Response.StatusCode = e.Status;
                await ctx.Response.WriteAsJsonAsync(e.Body, Json).ConfigureAwait(false);
                return;
            }
            long started = Stopwatch.GetTimestamp();
            if (await engine.ExportPrefixAsync(ids).ConfigureAwait(false) is not { } entry)
            {
                ctx.Response.StatusCode = 404;
                await ctx.Response.WriteAsJsonAsync(new ApiError(404, $"No prefix of the {ids.Length} prompt tokens is cached here.", "prompt", code: "prefix_not_cached").Body, Json).ConfigureAwait(false);
                return;
            }
            // from memory, not through a file: a 7B state is 134 MB, and a disk write and read of it cost more than the transfer
            double loop = Stopwatch.GetElapsedTime(started).TotalMilliseconds; // on the engine's loop: the device copies into the file's bytes
            byte[] file = entry.Bytes;
            ctx.Response.Headers[HandOffTimingHeader] = string.Create(CultureInfo.InvariantCulture, $"loop_ms={loop:0.0}");
            ctx.Response.ContentType = "application/octet-stream";
            ctx.Response.Headers[PrefixTokensHeader] = entry.Tokens.Length.ToString(CultureInfo.InvariantCulture);
            ctx.Response.ContentLength = file.Length;
            await ctx.Response.Body.WriteAsync(file, ctx.RequestAborted).ConfigureAwait(false);
        });
        app.MapPost("/internal/prefix/import", async ctx =>
        {
            if (ctx.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit) limit.MaxRequestBodySize = MaxHandOffBytes;
            byte[] file;
            long started = Stopwatch.GetTimestamp();
            try
            {
                file = await ReadAll(ctx).ConfigureAwait(false);
            }
            catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
            {
                ctx.Response.StatusCode = 413;
                await ctx.Response.WriteAsJsonAsync(new ApiError(413, $"The prefix state is larger than {MaxHandOffBytes} bytes.", code: "request_too_large").Body, Json).ConfigureAwait(false);
                return;
            }
            double read = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
            PrefixHandOff entry;
            try
            {
                entry = PrefixHandOff.FromBytes(file, "the request body", engine.Session.Manifest);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // whatever the file holds is the sender's: a 400 that says why, never a 500
                ctx.Response.StatusCode = 400;
                await ctx.Response.WriteAsJsonAsync(new ApiError(400, e.Message, code: "invalid_prefix_state").Body, Json).ConfigureAwait(false);
                return;
            }
            double parsed = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
            bool stored = await engine.ImportPrefixAsync(entry).ConfigureAwait(false);
            double done = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
            ctx.Response.Headers[HandOffTimingHeader] = string.Create(CultureInfo.InvariantCulture, $"read_ms={read:0.0}; parse_ms={parsed - read:0.0}; device_ms={done - parsed:0.0}");
            await ctx.Response.WriteAsJsonAsync(new { tokens = entry.Tokens.Length, stored }, Json).ConfigureAwait(false);
        });
    }

    /// <summary>The whole request body in one array (into one of the announced length when there is a Content-Length).</summary>
    private static async Task<byte[]> ReadAll(HttpContext ctx)
    {
        if (ctx.Request.ContentLength is { } n && n <= Array.MaxLength)
        {
            var bytes = new byte[n];
            await ctx.Request.Body.ReadExactlyAsync(bytes, ctx.RequestAborted).ConfigureAwait(false);
            return bytes;
        }
        using var ms = new MemoryStream();
        await ctx.Request.Body.CopyToAsync(ms, ctx.RequestAborted).ConfigureAwait(false);
        return ms.ToArray();
    }

    /// <summary>
    /// Whether this server asks to be taken out of rotation (docs/routing.md, "Draining a replica"): its <c>/health</c>
    /// then answers 503. It still serves every request that reaches it, so nothing sent before a router or a load
    /// balancer notices is lost.
    /// </summary>
    private sealed class DrainSwitch
    {
        private volatile bool _draining;
        public bool Draining { get => _draining; set => _draining = value; }
    }

    /// <summary>
    /// <c>GET /health</c>: 200 <c>{"status": "ok", ...}</c>, or 503 <c>"draining"</c>; the load (<see cref="ReplicaLoad"/>)
    /// in the headers and the body.
    /// </summary>
    private static IResult Health(HttpContext ctx, ServingEngine engine, DrainSwitch drain)
    {
        var m = engine.Metrics;
        var load = new ReplicaLoad(m.Occupancy, m.QueueDepth, m.Slots, drain.Draining);
        load.WriteTo(ctx.Response.Headers);
        return Results.Json(new { status = load.State, running = load.Running, waiting = load.Waiting, slots = load.Slots },
            statusCode: load.Draining ? StatusCodes.Status503ServiceUnavailable : StatusCodes.Status200OK);
    }

    /// <summary>A small JSON endpoint (/tokenize, /detokenize): the answer, or the error in OpenAI's shape.</summary>
    private static async Task Answer(HttpContext ctx, Func<JsonElement, object> answer)
    {
        try
        {
            var result = answer(await ReadBody(ctx).ConfigureAwait(false));
            await ctx.Response.WriteAsJsonAsync(result, Json).ConfigureAwait(false);
        }
        catch (ApiError e)
        {
            ctx.Response.StatusCode = e.Status;
            await ctx.Response.WriteAsJsonAsync(e.Body, Json).ConfigureAwait(false);
        }
        catch (XLstmOnnxException e)
        {
            ctx.Response.StatusCode = 400;
            await ctx.Response.WriteAsJsonAsync(new ApiError(400, e.Message).Body, Json).ConfigureAwait(false);
        }
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

    /// <summary>Logs a request refused before any endpoint (Host, Origin, API key).</summary>
    internal static void LogRefusal(ILogger log, HttpContext ctx, string error) =>
        LogRefused(log, ctx.TraceIdentifier, ctx.Request.Path.Value ?? "", ctx.Response.StatusCode, error, 0);

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
            var body = await ReadBody(ctx).ConfigureAwait(false);
            var req = OpenAiRequest.Parse(body, engine, options, chat);
            rec.PromptTokens = req.PromptTokens;
            await (req.Stream ? Stream(ctx, engine, req, chat, rec) : Respond(ctx, engine, req, chat, rec)).ConfigureAwait(false);
        }
        catch (ApiError e)
        {
            rec.Error = e.Message;
            ctx.Response.StatusCode = e.Status;
            if (e.Status == StatusCodes.Status429TooManyRequests) ctx.Response.Headers.RetryAfter = RetryAfterSeconds.ToString(CultureInfo.InvariantCulture);
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

    /// <summary>The Retry-After of a 429 (seconds): about the time a waiting request needs to start.</summary>
    public const int RetryAfterSeconds = 1;

    /// <summary>The response header that reports the seed used: choice <c>index</c> sampled with seed + index (send it as <c>seed</c> to repeat).</summary>
    public const string SeedHeader = "x-seed";

    /// <summary>Submits every choice (index = prompt × n + j, seed + index) and merges their events.</summary>
    private static ChannelReader<(int Index, CompletionEvent Event)> Submit(ServingEngine engine, ApiRequest r, CancellationToken cancel)
    {
        if (engine.Options.QueueCapacity - engine.Metrics.QueueDepth < r.Choices && r.Choices > 1)
        {
            throw new ApiError(429, "The server is busy: too many requests are waiting; retry later.", type: "rate_limit_error", code: "rate_limit_exceeded");
        }
        var readers = new List<ChannelReader<CompletionEvent>>();
        try
        {
            for (int i = 0; i < r.Choices; i++) readers.Add(engine.Submit(r.Prompts[i / r.N].Ids, r.Options with { Seed = r.Seed + (ulong)i }, cancel));
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

    /// <summary>What one choice has produced so far.</summary>
    private sealed class Choice
    {
        public readonly StringBuilder Text = new();
        public readonly List<int> Ids = [];
        public readonly ChatReply Reply = new();
        public string? Finish;
        public int Offset;                                   // text_offset of the next token (completions)
        public readonly List<object> Content = [];           // chat: logprobs.content entries
        public readonly List<string> Tokens = [];            // completions: logprobs.tokens ...
        public readonly List<float> TokenLogProbs = [];
        public readonly List<Dictionary<string, float>> Tops = [];
        public readonly List<int> Offsets = [];
    }

    /// <summary>Token strings and bytes as OpenAI reports them in logprobs.</summary>
    private sealed class TokenText(Runtime.Tokenization.HfTokenizer? tokenizer)
    {
        private readonly Dictionary<int, (string Text, int[]? Bytes)> _cache = [];

        /// <summary>
        /// The token's text and UTF-8 bytes: a token that is not whole UTF-8 (part of a character) reads "bytes:\xe2\x80"
        /// (OpenAI's form); without a tokenizer, "token_id:N" (vLLM's) and no bytes.
        /// </summary>
        public (string Text, int[]? Bytes) Of(int id)
        {
            if (_cache.TryGetValue(id, out var known)) return known;
            if (tokenizer is null || id >= tokenizer.Count) return _cache[id] = ($"token_id:{id}", null);
            byte[] bytes = tokenizer.TokenBytes(id);
            string text = System.Text.Unicode.Utf8.IsValid(bytes) ? Encoding.UTF8.GetString(bytes) : "bytes:" + string.Concat(bytes.Select(b => $"\\x{b:x2}"));
            return _cache[id] = (text, [.. bytes.Select(b => (int)b)]);
        }

        /// <summary>Characters the token adds to the text (for text_offset).</summary>
        public int Length(int id) => tokenizer is null || id >= tokenizer.Count ? 0 : Encoding.UTF8.GetString(tokenizer.TokenBytes(id)).Length;
    }

    /// <summary>JSON has no infinity: an id the model cannot produce (masked) reads OpenAI's floor, -9999.</summary>
    private static float Lp(float logProb) => float.IsNegativeInfinity(logProb) ? -9999f : logProb;

    /// <summary>Adds event <paramref name="e"/>'s text and log-probabilities to <paramref name="c"/>; returns the text to send and the logprobs of this token alone.</summary>
    private static (string Text, object? LogProbs) Take(Choice c, CompletionEvent e, ApiRequest r, bool chat, TokenText tokens)
    {
        string text = chat ? c.Reply.Next(e.Text) : e.Text;
        c.Text.Append(text);
        c.Ids.Add(e.Token);
        if (e.Finish != StopReason.None) c.Finish = Finish(e.Finish);
        if (!r.LogProbs || e.LogProb is not { } lp) return (text, null);
        var (token, bytes) = tokens.Of(e.Token);
        var top = e.TopLogProbs ?? [];
        if (chat)
        {
            object entry = new
            {
                token, logprob = Lp(lp), bytes,
                top_logprobs = top.Select(t => tokens.Of(t.Token) is var (tt, tb) ? new { token = tt, logprob = Lp(t.LogProb), bytes = tb } : null).ToArray(),
            };
            c.Content.Add(entry);
            return (text, new { content = new[] { entry }, refusal = (object?)null });
        }
        // completions: the top tokens by text (the first of equal texts) and always the chosen one
        var dict = new Dictionary<string, float>();
        foreach (var t in top) dict.TryAdd(tokens.Of(t.Token).Text, Lp(t.LogProb));
        dict.TryAdd(token, Lp(lp));
        int offset = c.Offset;
        c.Offset += tokens.Length(e.Token);
        c.Tokens.Add(token);
        c.TokenLogProbs.Add(Lp(lp));
        c.Tops.Add(dict);
        c.Offsets.Add(offset);
        return (text, new { tokens = new[] { token }, token_logprobs = new[] { Lp(lp) }, top_logprobs = new[] { dict }, text_offset = new[] { offset } });
    }

    private static object Usage(ApiRequest r, int completion) =>
        new { prompt_tokens = r.PromptTokens, completion_tokens = completion, total_tokens = r.PromptTokens + completion };

    private static async Task Respond(HttpContext ctx, ServingEngine engine, ApiRequest r, bool chat, RequestRecord rec)
    {
        var choices = Enumerable.Range(0, r.Choices).Select(_ => new Choice()).ToArray();
        var tokens = new TokenText(engine.Session.Tokenizer);
        for (int i = 0; i < r.Choices; i++)
        {
            if (r.Echo) choices[i].Text.Append(r.Prompts[i / r.N].Text);
        }
        int completion = 0;
        string id = rec.Id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        await foreach (var (i, e) in Submit(engine, r, ctx.RequestAborted).ReadAllAsync(ctx.RequestAborted).ConfigureAwait(false))
        {
            if (completion == 0) rec.FirstTokenAt = Stopwatch.GetTimestamp();
            Take(choices[i], e, r, chat, tokens);
            rec.CompletionTokens = ++completion;
        }
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var usage = Usage(r, completion);
        ctx.Response.Headers[SeedHeader] = r.Seed.ToString(CultureInfo.InvariantCulture);
        object body = chat
            ? new
            {
                id, @object = "chat.completion", created, model = r.Model, usage,
                choices = choices.Select((c, i) => new
                {
                    index = i,
                    message = new { role = "assistant", content = c.Text.ToString() },
                    logprobs = r.LogProbs ? new { content = c.Content, refusal = (object?)null } : null,
                    finish_reason = c.Finish,
                }),
            }
            : new
            {
                id, @object = "text_completion", created, model = r.Model, usage,
                choices = choices.Select((c, i) => new
                {
                    index = i,
                    text = c.Text.ToString(),
                    logprobs = r.LogProbs ? new { tokens = c.Tokens, token_logprobs = c.TokenLogProbs, top_logprobs = c.Tops, text_offset = c.Offsets } : null,
                    finish_reason = c.Finish,
                    token_ids = r.TokenIds ? c.Ids : null,
                }),
            };
        await ctx.Response.WriteAsJsonAsync(body, Json).ConfigureAwait(false);
    }

    private static async Task Stream(HttpContext ctx, ServingEngine engine, ApiRequest r, bool chat, RequestRecord rec)
    {
        var events = Submit(engine, r, ctx.RequestAborted); // 429 is still answered as JSON
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        ctx.Response.Headers[SeedHeader] = r.Seed.ToString(CultureInfo.InvariantCulture);
        string id = rec.Id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var choices = Enumerable.Range(0, r.Choices).Select(_ => new Choice()).ToArray();
        var tokens = new TokenText(engine.Session.Tokenizer);
        var started = new bool[r.Choices];
        // with include_usage every chunk carries "usage": null, and a last one the totals (OpenAI's shape)
        object? NoUsage() => null;
        async Task Send(object chunk)
        {
            await ctx.Response.WriteAsync("data: " + JsonSerializer.Serialize(chunk, Json) + "\n\n", ctx.RequestAborted).ConfigureAwait(false);
            await ctx.Response.Body.FlushAsync(ctx.RequestAborted).ConfigureAwait(false);
        }
        object Chunk(int index, string text, object? logprobs, string? reason, int[]? ids, bool first) => chat
            ? (r.IncludeUsage
                ? new { id, @object = "chat.completion.chunk", created, model = r.Model, choices = new[] { ChatChoice(index, text, logprobs, reason, first) }, usage = NoUsage() }
                : new { id, @object = "chat.completion.chunk", created, model = r.Model, choices = new[] { ChatChoice(index, text, logprobs, reason, first) } })
            : (r.IncludeUsage
                ? new { id, @object = "text_completion", created, model = r.Model, choices = new[] { new { index, text, logprobs, finish_reason = reason, token_ids = ids } }, usage = NoUsage() }
                : new { id, @object = "text_completion", created, model = r.Model, choices = new[] { new { index, text, logprobs, finish_reason = reason, token_ids = ids } } });
        try
        {
            if (r.Echo)
            {
                // the prompt first, as a chunk of its own per choice
                for (int i = 0; i < r.Choices; i++) await Send(Chunk(i, r.Prompts[i / r.N].Text!, null, null, r.TokenIds ? [] : null, false)).ConfigureAwait(false);
            }
            await foreach (var (i, e) in events.ReadAllAsync(ctx.RequestAborted).ConfigureAwait(false))
            {
                if (rec.CompletionTokens++ == 0) rec.FirstTokenAt = Stopwatch.GetTimestamp();
                var (text, logprobs) = Take(choices[i], e, r, chat, tokens);
                string? reason = e.Finish == StopReason.None ? null : Finish(e.Finish);
                await Send(Chunk(i, text, logprobs, reason, r.TokenIds ? [e.Token] : null, !started[i])).ConfigureAwait(false);
                started[i] = true;
            }
            if (r.IncludeUsage)
            {
                await Send(new { id, @object = chat ? "chat.completion.chunk" : "text_completion", created, model = r.Model, choices = Array.Empty<object>(), usage = Usage(r, rec.CompletionTokens) }).ConfigureAwait(false);
            }
            await ctx.Response.WriteAsync("data: [DONE]\n\n", ctx.RequestAborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            // the client went away; the engine frees its slot at the next step
        }
    }

    private static object ChatChoice(int index, string text, object? logprobs, string? reason, bool first) => new
    {
        index,
        delta = first ? new { role = (string?)"assistant", content = text } : new { role = (string?)null, content = text },
        logprobs,
        finish_reason = reason,
    };
}
