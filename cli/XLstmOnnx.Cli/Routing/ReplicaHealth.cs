using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Yarp.ReverseProxy.Health;
using Yarp.ReverseProxy.Model;
using XLstmOnnx.Cli.Serving;

namespace XLstmOnnx.Cli.Routing;

/// <summary>What the last <c>/health</c> probe of a replica found: whether it answered, and the load it reported.</summary>
internal sealed record ReplicaReport(bool Answered, ReplicaLoad? Load)
{
    /// <summary>Up and asking to be taken out: its states can still be exported.</summary>
    public bool Draining => Answered && Load is { Draining: true };
}

/// <summary>The last <see cref="ReplicaReport"/> of every replica, by replica id. Thread-safe.</summary>
internal sealed class ReplicaReports
{
    private readonly ConcurrentDictionary<string, ReplicaReport> _reports = new();

    public ReplicaReport? Of(string replica) => _reports.TryGetValue(replica, out var r) ? r : null;

    public void Set(string replica, ReplicaReport report) => _reports[replica] = report;
}

/// <summary>
/// YARP's active health policy <see cref="PolicyName"/> (docs/routing.md, "Health"): a replica whose <c>/health</c>
/// answers 2xx is healthy; any other answer (a draining replica's 503 among them) or none takes it out, and the next
/// good answer puts it back. It also keeps each answer's <see cref="ReplicaLoad"/> headers in <see cref="ReplicaReports"/>, which the
/// routing policy reads to move conversations off full or draining replicas.
/// </summary>
internal sealed class ReplicaHealthPolicy(IDestinationHealthUpdater updater, ReplicaReports reports, ILoggerFactory logs) : IActiveHealthCheckPolicy
{
    private readonly ILogger _log = logs.CreateLogger("XLstmOnnx.Routing.Health");

    public const string PolicyName = "xlstm-health";

    public string Name => PolicyName;

    public void ProbingCompleted(ClusterState cluster, IReadOnlyList<DestinationProbingResult> probingResults)
    {
        var states = new List<NewActiveDestinationHealth>(probingResults.Count);
        foreach (var probe in probingResults)
        {
            var response = probe.Response;
            string id = probe.Destination.DestinationId;
            var report = new ReplicaReport(response is not null, response is null ? null : ReplicaLoad.Read(response.Headers));
            var before = reports.Of(id);
            reports.Set(id, report);
            bool healthy = response is { IsSuccessStatusCode: true };
            // one line when a replica's state changes (YARP's own probe-failure warnings are turned down: a stack each probe)
            string state = report.Draining ? "draining" : healthy ? "in" : "out";
            string previous = before is null ? "unknown" : before.Draining ? "draining" : before.Answered && probe.Destination.Health.Active == DestinationHealth.Healthy ? "in" : "out";
            if (state != previous)
            {
                string why = response is null ? $"no answer to /health ({probe.Exception?.InnerException?.Message ?? probe.Exception?.Message})"
                    : $"/health answered {(int)response.StatusCode}";
                _log.Log(state == "in" ? LogLevel.Information : LogLevel.Warning, "replica {Replica} ({Address}) is {State}: {Why}", id, probe.Destination.Model.Config.Address, state, why);
            }
            states.Add(new NewActiveDestinationHealth(probe.Destination, healthy ? DestinationHealth.Healthy : DestinationHealth.Unhealthy));
        }
        updater.SetActive(cluster, states);
    }
}
