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
/// prefix cache are reused; unless it is full (a request would wait for a slot there, by its last <c>/health</c> report
/// or by the requests in flight to it) while another replica is not: then the conversation moves (reason
/// <c>moved</c>), as it does when its replica is out;</item>
/// <item>else the replica that served the longest shared prompt prefix (the router's own <see cref="RoutingTable"/>);</item>
/// <item>else the least loaded: among the replicas not far busier than the rest (requests in flight through this
/// router at most twice the mean, or one more than the least busy), the one sent the fewest requests so far, then each
/// in turn.</item>
/// </list>
/// A conversation that moves stays where it went. When the replica it leaves answered its last probe (full, or
/// draining), <see cref="Chosen"/> names it in <see cref="HandOffItem"/> and the router hands its state over first (<see cref="StateHandOff"/>);
/// from a replica that is gone nothing can be exported, and the new one rebuilds the state from the transcript. With
/// one replica available YARP takes it without asking the policy; <see cref="Chosen"/> records every forward either way.
/// </summary>
internal sealed class RoutingPolicy(RoutingTable table, RouterMetrics metrics, ReplicaReports reports) : ILoadBalancingPolicy
{
    public const string PolicyName = "xlstm";
    /// <summary>Where the policy notes why it picked a replica (one of <see cref="Reasons"/>).</summary>
    public static readonly object ReasonItem = new();
    /// <summary>Where the policy names the replica whose state should be handed to the one it picked (a replica id).</summary>
    public static readonly object HandOffItem = new();
    public static readonly string[] Reasons = ["session", "moved", "prefix", "load", "only"];

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> _sent = new();
    private int _turn;

    public string Name => PolicyName;

    public DestinationState? PickDestination(HttpContext context, ClusterState cluster, IReadOnlyList<DestinationState> availableDestinations)
    {
        if (availableDestinations.Count == 0) return null;
        var keys = KeysOf(context);
        string? home = keys.Session is { } s ? table.Session(s) : null, leaving = null;
        if (home is not null)
        {
            var at = availableDestinations.FirstOrDefault(d => d.DestinationId == home);
            if (at is not null && !(Full(at) && availableDestinations.Any(d => d != at && !Full(d))))
            {
                context.Items[ReasonItem] = "session";
                return at;
            }
            leaving = home;
        }
        var candidates = leaving is null ? availableDestinations : [.. availableDestinations.Where(d => d.DestinationId != leaving)];
        DestinationState? Available(string? id) => id is null ? null : candidates.FirstOrDefault(d => d.DestinationId == id);

        string reason = "prefix";
        var pick = Available(table.LongestPrefix(keys.Prefixes, id => Available(id) is not null));
        if (pick is null)
        {
            reason = "load";
            pick = LeastLoaded(candidates);
        }
        context.Items[ReasonItem] = reason;
        return pick;
    }

    /// <summary>
    /// A request sent to <paramref name="replica"/> now would wait for a slot: by its last <c>/health</c> report (running
    /// and waiting against its slots), or by the requests this router has in flight to it. Unknown (no report yet, or
    /// not a <c>serve</c> replica): not full.
    /// </summary>
    private bool Full(DestinationState replica) =>
        reports.Of(replica.DestinationId)?.Load is { } load && (load.Full || replica.ConcurrentRequestCount >= load.Slots);

    /// <summary>
    /// Remembers where a request went (its conversation and prefix blocks) and counts it. Called for every forwarded
    /// request, also when YARP took the only available replica without asking the policy (reason "only").
    /// </summary>
    public string Chosen(HttpContext context, string replica)
    {
        var keys = KeysOf(context);
        string reason = context.Items.TryGetValue(ReasonItem, out var r) && r is string why ? why : "only";
        if (keys.Session is { } session)
        {
            if (table.Session(session) is { } home && home != replica)
            {
                reason = "moved";
                // up at its last probe (full, or draining: its /health answers 503 and YARP has taken it out), so its state can be exported
                if (reports.Of(home) is { Answered: true }) context.Items[HandOffItem] = home;
            }
            table.SetSession(session, replica);
        }
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
        // one reading of each count: other requests change them meanwhile, and two readings that disagree once left no
        // replica to pick (a 500 in the H200 run; RoutingPolicyTests.PicksStayValidWhileOtherThreadsRoute)
        var now = destinations.Select(d => (Replica: d, InFlight: d.ConcurrentRequestCount, Sent: _sent.TryGetValue(d.DestinationId, out long n) ? n : 0)).ToList();
        int least = now.Min(r => r.InFlight);
        double bound = Math.Max(least + 1, 2 * now.Average(r => r.InFlight));
        var idle = now.Where(r => r.InFlight <= bound).ToList(); // holds the least busy at least
        long fewest = idle.Min(r => r.Sent);
        var ties = idle.Where(r => r.Sent == fewest).ToList(); // holds the one with the fewest at least
        return ties[(int)((uint)Interlocked.Increment(ref _turn) % (uint)ties.Count)].Replica;
    }
}

/// <summary>The router's instruments (meter <see cref="MeterName"/>, on the router's <c>/metrics</c>).</summary>
internal sealed class RouterMetrics : IDisposable
{
    public const string MeterName = "XLstmOnnx.Routing";
    private readonly Meter _meter = new(MeterName);
    private readonly Counter<long> _routed, _handOffs, _handOffBytes;
    private readonly Histogram<double> _handOffSeconds;

    public RouterMetrics(Func<(int Sessions, int Prefixes)> table)
    {
        _routed = _meter.CreateCounter<long>("xlstm_router_requests", null, "Requests sent to a replica, by replica and by the rule that chose it (session, prefix, load).");
        _handOffs = _meter.CreateCounter<long>("xlstm_router_handoffs", null, "State hand-offs before a moved conversation's turn, by result (moved, not_cached, failed; short: the prompt was under --handoff-min-tokens, read again instead).");
        _handOffBytes = _meter.CreateCounter<long>("xlstm_router_handoff_bytes", "By", "Bytes of state moved between replicas.");
        _handOffSeconds = _meter.CreateHistogram("xlstm_router_handoff_seconds", "s", "Time of a state hand-off (export, transfer and import).",
            tags: null, advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] });
        _meter.CreateObservableGauge("xlstm_router_sessions", () => table().Sessions, null, "Conversations the router remembers.");
        _meter.CreateObservableGauge("xlstm_router_prefixes", () => table().Prefixes, null, "Prompt-prefix hashes the router remembers.");
    }

    public Meter Meter => _meter;

    public void Routed(string replica, string reason) =>
        _routed.Add(1, new KeyValuePair<string, object?>("replica", replica), new KeyValuePair<string, object?>("reason", reason));

    public void HandedOff(StateHandOff.Result result)
    {
        _handOffs.Add(1, new KeyValuePair<string, object?>("result", result.Outcome));
        if (result.Outcome != "moved") return;
        _handOffBytes.Add(result.Bytes);
        _handOffSeconds.Record(result.Took.TotalSeconds);
    }

    public void Dispose() => _meter.Dispose();
}
