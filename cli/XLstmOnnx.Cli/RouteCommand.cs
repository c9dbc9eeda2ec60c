using System.CommandLine;
using Microsoft.Extensions.Hosting;
using XLstmOnnx.Cli.Routing;

namespace XLstmOnnx.Cli;

/// <summary>
/// <c>xlstm-onnx route --replicas URL,URL,...</c>: one OpenAI-compatible address in front of several <c>serve</c>
/// replicas (<see cref="Router"/>; docs/routing.md).
/// </summary>
internal static class RouteCommand
{
    public static Command Create()
    {
        var replicas = new Option<string>("--replicas") { Description = "Comma-separated base URLs of the serve replicas, e.g. http://127.0.0.1:8001,http://127.0.0.1:8002.", Required = true };
        var host = new Option<string>("--host") { Description = "IP address to listen on, or localhost; beyond loopback only with --allow-remote.", DefaultValueFactory = _ => "127.0.0.1" };
        var allowRemote = new Option<bool>("--allow-remote") { Description = "Allow a --host beyond loopback (the replicas' --api-key still applies: the router passes Authorization through)." };
        var port = new Option<int>("--port") { Description = "Port (0: any free one).", DefaultValueFactory = _ => 8080 };
        var health = new Option<int>("--health-interval-ms") { Description = "How often each replica's /health is asked; one failed answer takes it out, one good answer puts it back.", DefaultValueFactory = _ => 2000 };
        var healthTimeout = new Option<int>("--health-timeout-ms") { Description = "How long a /health answer may take before it counts as a failure (a loaded replica answers slowly).", DefaultValueFactory = _ => 5000 };
        var blockChars = new Option<int>("--prefix-block-chars") { Description = "Characters a block of a text prompt or chat transcript: prompts that share whole blocks go to the replica that served them.", DefaultValueFactory = _ => 64 };
        var blockTokens = new Option<int>("--prefix-block-tokens") { Description = "Ids a block of a token-id prompt.", DefaultValueFactory = _ => 16 };
        var entries = new Option<int>("--table-entries") { Description = "Conversations and prefix blocks remembered, each (least recently used go first).", DefaultValueFactory = _ => 1 << 20 };
        var internalToken = new Option<string?>("--internal-token") { Description = $"The replicas' internal token (default: ${ServeCommand.InternalTokenVariable}): a conversation that moves off a full or draining replica takes its state along (without it, the new replica reads the transcript again)." };
        var handOffMin = new Option<int>("--handoff-min-tokens") { Description = "Shortest prompt (tokens; text estimated at 4 characters a token) whose moving conversation takes its state along; shorter ones are read again on the new replica, which is faster (0: always).", DefaultValueFactory = _ => 12288 };
        var handOffTimeout = new Option<int>("--handoff-timeout-ms") { Description = "How long a state hand-off may take before the turn goes on without it.", DefaultValueFactory = _ => 30000 };
        var cmd = new Command("route", "One OpenAI-compatible front for several serve replicas: by conversation, shared prompt prefix, then load.")
            { replicas, host, port, allowRemote, health, healthTimeout, blockChars, blockTokens, entries, internalToken, handOffMin, handOffTimeout };
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            var options = new RouterOptions
            {
                Replicas = r.GetValue(replicas)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                Host = r.GetValue(host)!,
                Port = r.GetValue(port),
                AllowRemote = r.GetValue(allowRemote),
                HealthInterval = TimeSpan.FromMilliseconds(r.GetValue(health)),
                HealthTimeout = TimeSpan.FromMilliseconds(r.GetValue(healthTimeout)),
                PrefixBlockChars = r.GetValue(blockChars),
                PrefixBlockTokens = r.GetValue(blockTokens),
                TableEntries = r.GetValue(entries),
                InternalToken = r.GetValue(internalToken) ?? (Environment.GetEnvironmentVariable(ServeCommand.InternalTokenVariable) is { Length: > 0 } it ? it : null),
                HandOffMinTokens = r.GetValue(handOffMin),
                HandOffTimeout = TimeSpan.FromMilliseconds(r.GetValue(handOffTimeout)),
            };
            var (app, url) = Router.StartAsync(options).GetAwaiter().GetResult();
            Console.Error.WriteLine($"routing {url} to {options.Replicas.Count} replicas ({string.Join(", ", options.Replicas.Select((u, i) => $"{Router.ReplicaId(i)} {u}"))}); /health, /metrics; Ctrl+C stops");
            app.WaitForShutdownAsync().GetAwaiter().GetResult();
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 0;
        }));
        return cmd;
    }
}
