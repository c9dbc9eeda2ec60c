using Microsoft.AspNetCore.Http;
using NUnit.Framework;
using Yarp.ReverseProxy.Model;
using XLstmOnnx.Cli.Routing;
using XLstmOnnx.Cli.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// <see cref="RoutingPolicy"/> on its own, without HTTP: its choices while other threads route at the same time, and
/// the session rule's move off a full replica.
/// </summary>
public sealed class RoutingPolicyTests
{
    private static (RoutingPolicy Policy, ReplicaReports Reports, RouterMetrics Metrics) Policy()
    {
        var table = new RoutingTable(1 << 16);
        var metrics = new RouterMetrics(() => table.Count);
        var reports = new ReplicaReports();
        return (new RoutingPolicy(table, metrics, reports), reports, metrics);
    }

    private static HttpContext Request(string? session = null)
    {
        var ctx = new DefaultHttpContext();
        ctx.Items[RouteKeys.Item] = new RouteKeys(session, []);
        return ctx;
    }

    /// <summary>
    /// Eight threads route 20,000 requests each, the counts of requests sent changing under them (the H200 run
    /// of two replicas had one request in 1,729 answered 500: the least-loaded rule read a count twice and found no
    /// replica). Every pick must be one of the replicas, and the counts must stay within a few percent of each other.
    /// </summary>
    [Test]
    public void PicksStayValidWhileOtherThreadsRoute()
    {
        var (policy, _, metrics) = Policy();
        using var _m = metrics;
        var replicas = Enumerable.Range(0, 3).Select(i => new DestinationState(Router.ReplicaId(i))).ToArray();
        var picked = new int[replicas.Length];
        Parallel.For(0, 8, new ParallelOptions { MaxDegreeOfParallelism = 8 }, _ =>
        {
            for (int i = 0; i < 20_000; i++)
            {
                var ctx = Request();
                var d = policy.PickDestination(ctx, null!, replicas) ?? throw new AssertionException("no replica picked");
                Interlocked.Increment(ref picked[Array.IndexOf(replicas, d)]);
                policy.Chosen(ctx, d.DestinationId);
            }
        });
        Assert.That(picked.Sum(), Is.EqualTo(160_000));
        Assert.That(picked.Max() - picked.Min(), Is.LessThan(0.05 * picked.Max()), string.Join(", ", picked));
    }

    [Test]
    public void AConversationMovesOffAFullReplicaOnlyWhenAnotherHasRoom()
    {
        var (policy, reports, metrics) = Policy();
        using var _m = metrics;
        var replicas = Enumerable.Range(0, 2).Select(i => new DestinationState(Router.ReplicaId(i))).ToArray();
        var first = Request("c");
        string home = policy.PickDestination(first, null!, replicas)!.DestinationId;
        policy.Chosen(first, home);
        string other = home == "r0" ? "r1" : "r0";
        foreach (var (id, running) in new[] { (home, 4), (other, 1) }) reports.Set(id, new ReplicaReport(true, new ReplicaLoad(running, 0, 4, false)));

        var moved = Request("c");
        Assert.That(policy.PickDestination(moved, null!, replicas)!.DestinationId, Is.EqualTo(other), "home is full, the other has a free slot");
        Assert.That(policy.Chosen(moved, other), Is.EqualTo("moved"));
        Assert.That(moved.Items[RoutingPolicy.HandOffItem], Is.EqualTo(home), "home answered its last probe: its state can be handed over");

        // both full: the conversation stays where it is (now the other replica), nothing to hand over
        reports.Set(home, new ReplicaReport(true, new ReplicaLoad(4, 2, 4, false)));
        reports.Set(other, new ReplicaReport(true, new ReplicaLoad(4, 0, 4, false)));
        var stays = Request("c");
        Assert.That(policy.PickDestination(stays, null!, replicas)!.DestinationId, Is.EqualTo(other));
        Assert.That(policy.Chosen(stays, other), Is.EqualTo("session"));
        Assert.That(stays.Items.ContainsKey(RoutingPolicy.HandOffItem), Is.False);
    }
}
