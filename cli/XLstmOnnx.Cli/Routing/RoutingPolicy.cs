using System.Diagnostics.Metrics;
using Microsoft.AspNetCore.Http;
using Yarp.ReverseProxy.LoadBalancing;
using Yarp.ReverseProxy.Model;

namespace XLstmOnnx.Cli.Routing;

/// <summary>
/// YARP's load-balancing policy <see cref="PolicyName"/> (docs/routing.md, "Choosing a replica"), among the replicas
/// YARP's health checks leave available:
/// <list type="number">
/// <item>the replica that last served the request's conversation (<see cref="RouteKeys.Session"/>), so its state and
/// prefix cache are reused;</item>
/// <item>else the replica that served the longest shared prompt prefix (the router's own <see cref="RoutingTable"/>);</item>
/// <item>else the least loaded: among the replicas not far busier than the rest (requests in flight through this
/// router at most twice the mean, or one more than the least busy), the one sent the fewest requests so far, then each
/// in turn.</item>
/// </list>
/// A conversation whose replica is gone moves to the replica the later rules pick, and stays there. With one replica
/// available YARP takes it without asking the policy; <see cref="Chosen"/> records every forward either way.
/// </summary>
internal sealed class RoutingPolicy(RoutingTable table, RouterMetrics metrics) : ILoadBalancingPolicy
{
    public const string PolicyName = "xlstm";
    /// <summary>Where the policy notes why it picked a replica (one of <see cref="Reasons"/>).</summary>
    public static readonly object ReasonItem = new();
    public static readonly string[] Reasons = ["session", "prefix", "load", "only"];

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> _sent = new();
    private int _turn;

    public string Name => PolicyName;

    public DestinationState? PickDestination(HttpContext context, ClusterState cluster, IReadOnlyList<DestinationState> availableDestinations)
    {
        if (availableDestinations.Count == 0) return null;
        var keys = KeysOf(context);
        DestinationState? Available(string? id) => id is null ? null : availableDestinations.FirstOrDefault(d => d.DestinationId == id);

        string reason = "session";
        var pick = keys.Session is { } s ? Available(table.Session(s)) : null;
        if (pick is null)
        {
            reason = "prefix";
            pick = Available(table.LongestPrefix(keys.Prefixes, id => Available(id) is not null));
        }
        if (pick is null)
        {
            reason = "load";
            pick = LeastLoaded(availableDestinations);
        }
        context.Items[ReasonItem] = reason;
        return pick;
    }

    /// <summary>
    /// Remembers where a request went (its conversation and prefix blocks) and counts it. Called for every forwarded
    /// request, also when YARP took the only available replica without asking the policy (reason "only").
    /// </summary>
    public string Chosen(HttpContext context, string replica)
    {
        var keys = KeysOf(context);
        string reason = context.Items.TryGetValue(ReasonItem, out var r) && r is string why ? why : "only";
        if (keys.Session is { } session) table.SetSession(session, replica);
        table.SetPrefixes(keys.Prefixes, replica);
        _sent.AddOrUpdate(replica, 1, (_, n) => n + 1);
        metrics.Routed(replica, reason);
        return reason;
    }

    private static RouteKeys KeysOf(HttpContext context) =>
        context.Items.TryGetValue(RouteKeys.Item, out var k) && k is RouteKeys keys ? keys : RouteKeys.None;

    /// <summary>
    /// Among the replicas not far busier than the rest, the fewest sent so far, then the next in turn. A replica batches
    /// its sequences, so a request or two more in flight costs it little, and following every such difference made equal
    /// replicas that share a machine's cores drift 25-50% apart on scheduling noise (docs/routing.md, "Choosing a
    /// replica"); a replica with twice the mean in flight (slow, or stuck) is passed over.
    /// </summary>
    private DestinationState LeastLoaded(IReadOnlyList<DestinationState> destinations)
    {
        long Sent(DestinationState d) => _sent.TryGetValue(d.DestinationId, out long n) ? n : 0;
        int least = destinations.Min(d => d.ConcurrentRequestCount);
        double mean = destinations.Average(d => d.ConcurrentRequestCount);
        double bound = Math.Max(least + 1, 2 * mean);
        var idle = destinations.Where(d => d.ConcurrentRequestCount <= bound).ToList();
        long fewest = idle.Min(Sent);
        var ties = idle.Where(d => Sent(d) == fewest).ToList();
        return ties[(int)((uint)Interlocked.Increment(ref _turn) % (uint)ties.Count)];
    }
}

/// <summary>The router's instruments (meter <see cref="MeterName"/>, on the router's <c>/metrics</c>).</summary>
internal sealed class RouterMetrics : IDisposable
{
    public const string MeterName = "XLstmOnnx.Routing";
    private readonly Meter _meter = new(MeterName);
    private readonly Counter<long> _routed;

    public RouterMetrics(Func<(int Sessions, int Prefixes)> table)
    {
        _routed = _meter.CreateCounter<long>("xlstm_router_requests", null, "Requests sent to a replica, by replica and by the rule that chose it (session, prefix, load).");
        _meter.CreateObservableGauge("xlstm_router_sessions", () => table().Sessions, null, "Conversations the router remembers.");
        _meter.CreateObservableGauge("xlstm_router_prefixes", () => table().Prefixes, null, "Prompt-prefix hashes the router remembers.");
    }

    public Meter Meter => _meter;

    public void Routed(string replica, string reason) =>
        _routed.Add(1, new KeyValuePair<string, object?>("replica", replica), new KeyValuePair<string, object?>("reason", reason));

    public void Dispose() => _meter.Dispose();
}
