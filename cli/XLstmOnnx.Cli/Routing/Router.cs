using System.Net;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using Yarp.ReverseProxy;
using Yarp.ReverseProxy.Configuration;
using Yarp.ReverseProxy.Forwarder;
using Yarp.ReverseProxy.Health;
using Yarp.ReverseProxy.LoadBalancing;
using Yarp.ReverseProxy.Model;
using XLstmOnnx.Cli.Serving;

namespace XLstmOnnx.Cli.Routing;

/// <summary>
/// <c>xlstm-onnx route</c>: one OpenAI-compatible front for several <c>serve</c> replicas (docs/routing.md). YARP proxies
/// every request (streams included) to one replica, asks each replica's <c>/health</c> every
/// <see cref="RouterOptions.HealthInterval"/> (one failed answer takes a replica out, one good answer puts it back) and
/// counts transport failures; <see cref="RoutingPolicy"/> picks the replica. The router's own endpoints: <c>/health</c>
/// (the replicas and their state) and <c>/metrics</c> (<see cref="RouterMetrics"/>). Each answer names the replica that
/// served it in <see cref="ReplicaHeader"/>. A failed forward is answered in OpenAI's error shape.
/// </summary>
public static class Router
{
    /// <summary>The response header that names the replica (its id: r0, r1, … in <c>--replicas</c> order).</summary>
    public const string ReplicaHeader = "X-Xlstm-Replica";
    /// <summary>The response header that says which rule chose the replica (session, prefix or load).</summary>
    public const string ReasonHeader = "X-Xlstm-Route";
    private const string ClusterId = "replicas";
    private const int MaxBodyBytes = 4 << 20; // as serve's
    /// <summary>Where a POST's body waits for a hand-off (it is the turn's prompt as the replicas read it).</summary>
    private static readonly object BodyItem = new();

    private static readonly JsonSerializerOptions Json = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>The id of the replica at <paramref name="index"/> of <see cref="RouterOptions.Replicas"/>.</summary>
    public static string ReplicaId(int index) => $"r{index}";

    /// <summary>Starts the router; returns the app (dispose it to stop) and its base address.</summary>
    public static async Task<(WebApplication App, string Url)> StartAsync(RouterOptions options, ILoggerProvider? logs = null)
    {
        var (replicas, address) = options.Validate();
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        if (logs is not null) builder.Logging.AddProvider(logs);
        else builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
        builder.Logging.AddFilter("Yarp", LogLevel.Warning); // YARP logs every forward at Information
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        builder.Logging.AddFilter("Yarp.ReverseProxy.Health", LogLevel.Error); // ReplicaHealthPolicy says when a replica goes out or comes back
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = MaxBodyBytes;
            ServerAccess.Listen(k, address, options.Port);
        });
        var table = new RoutingTable(options.TableEntries);
        var metrics = new RouterMetrics(() => table.Count);
        var reports = new ReplicaReports();
        builder.Services.AddSingleton(table);
        builder.Services.AddSingleton(metrics);
        builder.Services.AddSingleton(reports);
        builder.Services.AddSingleton<IActiveHealthCheckPolicy, ReplicaHealthPolicy>();
        builder.Services.AddSingleton<RoutingPolicy>();
        builder.Services.AddSingleton<ILoadBalancingPolicy>(sp => sp.GetRequiredService<RoutingPolicy>());
        builder.Services.AddReverseProxy().LoadFromMemory([Route()], [Cluster(replicas, options)]);
        builder.Services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService("xlstm-onnx-route"))
            .WithMetrics(m => m
                .AddMeter(RouterMetrics.MeterName)
                .AddView(i => ReferenceEquals(i.Meter, metrics.Meter) ? null : MetricStreamConfiguration.Drop)
                .AddPrometheusExporter(o => o.ScrapeResponseCacheDurationMilliseconds = 0));
        var app = builder.Build();
        var policy = app.Services.GetRequiredService<RoutingPolicy>();
        var handOff = options.InternalToken is { } token ? new StateHandOff(token, options.HandOffTimeout) : null;
        if (handOff is not null) app.Lifetime.ApplicationStopped.Register(handOff.Dispose);

        // a failure of the router's own code answers in OpenAI's shape too (never an empty 500), and is logged
        var routerLog = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("XLstmOnnx.Routing");
        app.Use(async (ctx, next) =>
        {
            try
            {
                await next(ctx).ConfigureAwait(false);
            }
            catch (Exception e) when (!ctx.Response.HasStarted && !ctx.RequestAborted.IsCancellationRequested)
            {
                routerLog.LogError(e, "{Method} {Path}: the router failed", ctx.Request.Method, ctx.Request.Path);
                await Error(ctx, 500, $"The router failed to route the request: {e.Message}", "router_error").ConfigureAwait(false);
            }
        });
        // the routing keys come from the body, which YARP then forwards from the buffer
        app.Use(async (ctx, next) =>
        {
            if (HttpMethods.IsPost(ctx.Request.Method))
            {
                ctx.Request.EnableBuffering(1 << 20, MaxBodyBytes);
                using var body = new MemoryStream();
                try
                {
                    await ctx.Request.Body.CopyToAsync(body, ctx.RequestAborted).ConfigureAwait(false);
                }
                catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
                {
                    await Error(ctx, 413, $"Request body exceeds {MaxBodyBytes} bytes.", "request_too_large").ConfigureAwait(false);
                    return;
                }
                ctx.Request.Body.Position = 0;
                var bytes = body.GetBuffer().AsMemory(0, (int)body.Length);
                ctx.Items[RouteKeys.Item] = RouteKeys.Read(bytes.Span, ctx.Request.Headers[RouteKeys.SessionHeader], options);
                ctx.Items[BodyItem] = (ReadOnlyMemory<byte>)bytes;
            }
            await next(ctx).ConfigureAwait(false);
        });
        app.MapGet("/health", (IProxyStateLookup state) => Health(state, reports));
        app.MapPrometheusScrapingEndpoint("/metrics");
        app.MapReverseProxy(pipeline =>
        {
            pipeline.UseLoadBalancing();
            pipeline.Use(async (ctx, next) =>
            {
                var proxy = ctx.GetReverseProxyFeature();
                if (proxy.AvailableDestinations is [var chosen])
                {
                    ctx.Response.Headers[ReplicaHeader] = chosen.DestinationId;
                    ctx.Response.Headers[ReasonHeader] = policy.Chosen(ctx, chosen.DestinationId);
                    if (ctx.Items.TryGetValue(RoutingPolicy.HandOffItem, out var f) && f is string from)
                    {
                        // the conversation moves off a replica that is still up: its state goes first (docs/routing.md, "Moving a conversation")
                        string what = await HandOver(ctx, proxy, from, chosen, handOff, options, metrics, routerLog).ConfigureAwait(false);
                        ctx.Response.Headers[StateHandOff.Header] = $"{from}; {what}";
                    }
                }
                await next().ConfigureAwait(false);
                if (ctx.GetForwarderErrorFeature() is { } error && !ctx.Response.HasStarted)
                {
                    int status = ctx.Response.StatusCode is >= 500 ? ctx.Response.StatusCode : 502;
                    string replica = proxy.ProxiedDestination?.DestinationId ?? "none";
                    await Error(ctx, status, $"The router could not forward the request to replica {replica}: {error.Error}. Retry: a replica that stopped is taken out within the health interval.", "replica_unavailable").ConfigureAwait(false);
                }
            });
            pipeline.UsePassiveHealthChecks();
        });
        try
        {
            await app.StartAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException)
        {
            await app.DisposeAsync().ConfigureAwait(false);
            throw new XLstmOnnxException($"option --port {options.Port}: cannot listen on {options.Host}: {(e.InnerException ?? e).Message}", e);
        }
        string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return (app, url);
    }

    /// <summary>
    /// Hands the state of a moving conversation from replica <paramref name="from"/> to <paramref name="to"/> before its
    /// turn is forwarded, when the router has the token and the prompt is long enough to be worth it; returns what
    /// happened, for <see cref="StateHandOff.Header"/>.
    /// </summary>
    private static async Task<string> HandOver(HttpContext ctx, IReverseProxyFeature proxy, string from, DestinationState to, StateHandOff? handOff,
        RouterOptions options, RouterMetrics metrics, ILogger log)
    {
        if (handOff is null) return "none";
        int promptTokens = ctx.Items.TryGetValue(RouteKeys.Item, out var k) && k is RouteKeys keys ? keys.PromptTokens : 0;
        if (promptTokens < options.HandOffMinTokens)
        {
            // reading the transcript again is faster than moving the state (docs/routing.md, "What moving costs")
            metrics.HandedOff(new StateHandOff.Result("short", 0, 0, TimeSpan.Zero));
            return "short";
        }
        if (proxy.AllDestinations.FirstOrDefault(d => d.DestinationId == from) is not { } source
            || !ctx.Items.TryGetValue(BodyItem, out var b) || b is not ReadOnlyMemory<byte> body) return "none";
        var result = await handOff.MoveAsync(source.Model.Config.Address, to.Model.Config.Address, body, ctx.RequestAborted).ConfigureAwait(false);
        metrics.HandedOff(result);
        if (result.Timing is { } timing) log.LogInformation("hand-off {From} -> {To}: {Tokens} tokens, {Bytes} bytes in {Ms:0.0} ms; {Timing}", from, to.DestinationId, result.Tokens, result.Bytes, result.Took.TotalMilliseconds, timing);
        if (result.Error is { } why) log.LogWarning("hand-off {From} -> {To} failed (the new replica reads the whole prompt): {Error}", from, to.DestinationId, why);
        return result.HeaderValue;
    }

    private static RouteConfig Route() => new()
    {
        RouteId = "api",
        ClusterId = ClusterId,
        Match = new RouteMatch { Path = "{**path}" },
    };

    private static ClusterConfig Cluster(Uri[] replicas, RouterOptions options) => new()
    {
        ClusterId = ClusterId,
        LoadBalancingPolicy = RoutingPolicy.PolicyName,
        Destinations = replicas.Select((u, i) => (Id: ReplicaId(i), Uri: u)).ToDictionary(d => d.Id, d => new DestinationConfig { Address = d.Uri.ToString() }),
        HealthCheck = new HealthCheckConfig
        {
            // with every replica out, answer 503 at once (YARP's default would try the dead ones anyway)
            AvailableDestinationsPolicy = HealthCheckConstants.AvailableDestinations.HealthyAndUnknown,
            Active = new ActiveHealthCheckConfig
            {
                Enabled = true,
                Interval = options.HealthInterval,
                // a loaded replica may answer slowly; only no answer within this counts as a failure
                Timeout = options.HealthTimeout,
                Policy = ReplicaHealthPolicy.PolicyName,
                Path = "/health",
            },
            Passive = new PassiveHealthCheckConfig
            {
                Enabled = true,
                Policy = HealthCheckConstants.PassivePolicy.TransportFailureRate,
                ReactivationPeriod = options.HealthInterval,
            },
        },
        // streams may be long: no idle timeout shorter than a slow generation's gap between tokens
        // HTTP/1.1 to the replicas (serve speaks it on plain http; no HTTP/2 attempt first)
        HttpRequest = new ForwarderRequestConfig
        {
            ActivityTimeout = TimeSpan.FromMinutes(10),
            Version = HttpVersion.Version11,
            VersionPolicy = HttpVersionPolicy.RequestVersionOrLower,
        },
    };

    private static IResult Health(IProxyStateLookup state, ReplicaReports reports)
    {
        if (!state.TryGetCluster(ClusterId, out var cluster)) return Results.Json(new { status = "unavailable", replicas = Array.Empty<object>() }, statusCode: 503);
        var replicas = cluster.Destinations.Values.OrderBy(d => d.DestinationId, StringComparer.Ordinal).Select(d => new
        {
            id = d.DestinationId,
            address = d.Model.Config.Address,
            healthy = IsUp(d),
            active = d.Health.Active.ToString().ToLowerInvariant(),
            passive = d.Health.Passive.ToString().ToLowerInvariant(),
            in_flight = d.ConcurrentRequestCount,
            draining = reports.Of(d.DestinationId) is { Draining: true },
            load = reports.Of(d.DestinationId)?.Load is { } l ? new { running = l.Running, waiting = l.Waiting, slots = l.Slots } : null,
        }).ToList();
        bool any = replicas.Any(r => r.healthy);
        return Results.Json(new { status = any ? "ok" : "unavailable", replicas }, statusCode: any ? 200 : 503);
    }

    private static bool IsUp(DestinationState d) => d.Health.Active != DestinationHealth.Unhealthy && d.Health.Passive != DestinationHealth.Unhealthy;

    private static Task Error(HttpContext ctx, int status, string message, string code)
    {
        ctx.Response.StatusCode = status;
        return ctx.Response.WriteAsJsonAsync(new ApiError(status, message, type: status >= 500 ? "server_error" : "invalid_request_error", code: code).Body, Json);
    }
}
