using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging.Abstractions;
using NUnit.Framework;
using XLstmOnnx.Cli.Routing;
using XLstmOnnx.Cli.Serving;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// <c>route</c> on loopback in front of three CPU replicas of the shipped model (docs/routing.md): conversations stick to
/// their replica, a shared prompt prefix goes where it is cached, unrelated prompts spread evenly, and greedy text
/// through the router equals a replica's answer alone. The failover case is <see cref="RouterFailoverTests"/>.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class RouterTests() : RouterFixture(3)
{
    [Test]
    public async Task ConversationsStayOnTheirReplica()
    {
        var rng = new Random(11);
        var seen = new Dictionary<string, HashSet<string>>();
        for (int turn = 0; turn < 3; turn++)
        {
            for (int c = 0; c < 6; c++)
            {
                // half the conversations name themselves with the header, half with OpenAI's user field
                string session = $"conversation-{c}";
                var body = RouterRig.Body(RouterRig.Ids(rng, 12, _vocab), 4, user: c % 2 == 0 ? null : session);
                var r = await RouterRig.Complete(_http, body, c % 2 == 0 ? session : null);
                (seen.TryGetValue(session, out var set) ? set : seen[session] = []).Add(r.Replica);
                if (turn > 0) Assert.That(r.Reason, Is.EqualTo("session"), $"{session}, turn {turn}");
            }
        }
        Assert.That(seen.Values, Has.All.Count.EqualTo(1), "each conversation on one replica: " + string.Join("; ", seen.Select(kv => $"{kv.Key}: {string.Join(",", kv.Value)}")));
        Assert.That(seen.Values.Select(v => v.Single()).Distinct().Count(), Is.GreaterThan(1), "conversations spread over replicas");
    }

    [Test]
    public async Task APromptSharingALongPrefixGoesToTheReplicaThatCachedIt()
    {
        var rng = new Random(12);
        var first = RouterRig.Ids(rng, 64, _vocab);
        var a = await RouterRig.Complete(_http, RouterRig.Body(first, 4));
        // other traffic in between, so the load rule alone would move on
        for (int i = 0; i < 4; i++) await RouterRig.Complete(_http, RouterRig.Body(RouterRig.Ids(rng, 40, _vocab), 2));
        var cached = Replica(a.Replica);
        double hits = await RouterRig.Metric(cached.Http, "xlstm_prefix_cache_hits");
        var b = await RouterRig.Complete(_http, RouterRig.Body(first.Concat(RouterRig.Ids(rng, 10, _vocab)).ToArray(), 4));
        Assert.That(b.Replica, Is.EqualTo(a.Replica), "the replica that served the shared 64 ids");
        Assert.That(b.Reason, Is.EqualTo("prefix"));
        Assert.That(await RouterRig.Metric(cached.Http, "xlstm_prefix_cache_hits"), Is.EqualTo(hits + 1), "a prefix-cache hit on that replica");
    }

    [Test]
    public async Task ChatsThatShareASystemPromptGoToTheSameReplica()
    {
        // the transcript's blocks: a system prompt of several blocks shared, the user's turn not
        const string system = "Thou art a scribe of the King James Bible. Answer in its words, verse by verse, and add nothing of thine own.";
        object Chat(string user) => new { model = "kjv", messages = new object[] { new { role = "system", content = system }, new { role = "user", content = user } }, max_tokens = 4, temperature = 0 };
        var first = await RouterRig.Chat(_http, Chat("Who begat Enos?"));
        var rng = new Random(14);
        for (int i = 0; i < 4; i++) await RouterRig.Complete(_http, RouterRig.Body(RouterRig.Ids(rng, 30, _vocab), 2));
        var second = await RouterRig.Chat(_http, Chat("What did God create in the beginning?"));
        Assert.That(second.Replica, Is.EqualTo(first.Replica));
        Assert.That(second.Reason, Is.EqualTo("prefix"));
    }

    [Test]
    public async Task UnrelatedPromptsSpreadEvenlyAndGreedyTextEqualsTheReplicaAlone()
    {
        // a router of its own: the load rule also evens out what the other tests sent through the shared one
        var (router, http) = await RouterRig.StartRouterAsync(_replicas);
        try
        {
            await SpreadAndCompare(http);
        }
        finally
        {
            http.Dispose();
            await router.DisposeAsync();
        }
    }

    private async Task SpreadAndCompare(HttpClient router)
    {
        var rng = new Random(13);
        var prompts = Enumerable.Range(0, 96).Select(_ => RouterRig.Ids(rng, 20 + rng.Next(20), _vocab)).ToArray();
        var results = new RouterRig.Answer[prompts.Length];
        int next = -1;
        await Task.WhenAll(Enumerable.Range(0, 6).Select(async _ =>
        {
            for (int i; (i = Interlocked.Increment(ref next)) < prompts.Length;) results[i] = await RouterRig.Complete(router, RouterRig.Body(prompts[i], 6));
        }));
        var counts = results.GroupBy(r => r.Replica).ToDictionary(g => g.Key, g => g.Count());
        Assert.That(counts.Keys, Is.EquivalentTo(new[] { "r0", "r1", "r2" }));
        // within 15% of each other (the issue's bound)
        Assert.That(counts.Values.Max() - counts.Values.Min(), Is.LessThanOrEqualTo(0.15 * counts.Values.Max()),
            string.Join(", ", counts) + "; rules: " + string.Join(", ", results.GroupBy(r => r.Reason).Select(g => $"{g.Key} {g.Count()}")));
        for (int i = 0; i < 8; i++)
        {
            var alone = await RouterRig.Complete(_replicas[0].Http, RouterRig.Body(prompts[i], 6), direct: true);
            Assert.That(results[i].Ids, Is.EqualTo(alone.Ids), $"prompt {i}: through the router ({results[i].Replica}) and r0 alone");
        }
    }

    [Test]
    public async Task TheRouterReportsItsReplicasAndCountsItsChoices()
    {
        using var health = await _http.GetAsync("/health");
        var doc = JsonDocument.Parse(await health.Content.ReadAsStringAsync()).RootElement;
        Assert.That(health.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(doc.GetProperty("replicas").EnumerateArray().Select(r => r.GetProperty("id").GetString()), Is.EqualTo(new[] { "r0", "r1", "r2" }));
        var answer = await RouterRig.Complete(_http, RouterRig.Body(new[] { 1, 2, 3 }, 1));
        Assert.That(RoutingPolicy.Reasons, Does.Contain(answer.Reason));
        Assert.That(await RouterRig.Metric(_http, "xlstm_router_requests"), Is.GreaterThan(0));
        // a request the replica refuses comes back as the replica answered it (OpenAI's shape), through the router
        using var bad = await _http.PostAsJsonAsync("/v1/completions", new { model = "kjv", prompt = "x", max_tokens = -1 });
        Assert.That(bad.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(await bad.Content.ReadAsStringAsync(), Does.Contain("\"param\":\"max_tokens\""));
    }

    [Test]
    public void BadOptionsNameTheOptionAndTheValue()
    {
        var e = Assert.Throws<XLstmOnnxException>(() => new RouterOptions().Validate())!;
        Assert.That(e.Message, Does.Contain("--replicas"));
        e = Assert.Throws<XLstmOnnxException>(() => new RouterOptions { Replicas = ["http://127.0.0.1:1", "ftp://x"] }.Validate())!;
        Assert.That(e.Message, Does.Contain("--replicas").And.Contain("'ftp://x'").And.Contain("replica 2 of 2"));
        e = Assert.Throws<XLstmOnnxException>(() => new RouterOptions { Replicas = ["http://127.0.0.1:1/", "http://127.0.0.1:1"] }.Validate())!;
        Assert.That(e.Message, Does.Contain("http://127.0.0.1:1/").And.Contain("2 times"));
        e = Assert.Throws<XLstmOnnxException>(() => new RouterOptions { Replicas = ["http://127.0.0.1:1"], Host = "0.0.0.0" }.Validate())!;
        Assert.That(e.Message, Does.Contain("--host 0.0.0.0").And.Contain("--allow-remote"));
        e = Assert.Throws<XLstmOnnxException>(() => new RouterOptions { Replicas = ["http://127.0.0.1:1"], HealthInterval = TimeSpan.FromMilliseconds(10) }.Validate())!;
        Assert.That(e.Message, Does.Contain("--health-interval-ms").And.Contain("found 10"));
        e = Assert.Throws<XLstmOnnxException>(() => new RouterOptions { Replicas = ["http://127.0.0.1:1"], HealthTimeout = TimeSpan.Zero }.Validate())!;
        Assert.That(e.Message, Does.Contain("--health-timeout-ms").And.Contain("found 0"));
        e = Assert.Throws<XLstmOnnxException>(() => new RouterOptions { Replicas = ["http://127.0.0.1:1"], HandOffTimeout = TimeSpan.FromMilliseconds(5) }.Validate())!;
        Assert.That(e.Message, Does.Contain("--handoff-timeout-ms").And.Contain("found 5"));
        e = Assert.Throws<XLstmOnnxException>(() => new RouterOptions { Replicas = ["http://127.0.0.1:1"], HandOffMinTokens = -1 }.Validate())!;
        Assert.That(e.Message, Does.Contain("--handoff-min-tokens").And.Contain("found -1"));
        e = Assert.Throws<XLstmOnnxException>(() => new RouterOptions { Replicas = ["http://127.0.0.1:1"], InternalToken = "two words" }.Validate())!;
        Assert.That(e.Message, Does.Contain("--internal-token").And.Contain("9 characters").And.Not.Contain("two words"));
    }
}

/// <summary>
/// A replica that stops answering mid-conversation (its port closes): the router takes it out within the health
/// interval and the conversation goes on on another replica, rebuilt from the transcript the client sends (OpenAI's API
/// is stateless: every turn carries the whole conversation), with the text of an uninterrupted run; when the replica
/// answers again, the router puts it back.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class RouterFailoverTests() : RouterFixture(3)
{
    [Test]
    public async Task AConversationContinuesOnAnotherReplicaWhenItsReplicaStops()
    {
        const string first = "In the beginning God created the heaven and the earth.\n";
        const string question = "\nAnd God said,";
        // uninterrupted
        var a1 = await RouterRig.Complete(_http, RouterRig.Body(first, 16), "uninterrupted");
        var a2 = await RouterRig.Complete(_http, RouterRig.Body(first + a1.Text + question, 16), "uninterrupted");
        Assert.That(a2.Replica, Is.EqualTo(a1.Replica));
        // the same conversation, its replica stopped after the first turn
        var b1 = await RouterRig.Complete(_http, RouterRig.Body(first, 16), "interrupted");
        Assert.That(b1.Text, Is.EqualTo(a1.Text));
        var stopped = Replica(b1.Replica);
        await stopped.StopHttpAsync();
        await RouterRig.WaitForHealth(_http, b1.Replica, healthy: false);
        var b2 = await RouterRig.Complete(_http, RouterRig.Body(first + b1.Text + question, 16), "interrupted");
        Assert.That(b2.Replica, Is.Not.EqualTo(b1.Replica));
        Assert.That(b2.Text, Is.EqualTo(a2.Text), "the second turn, rebuilt from the transcript on another replica");
        // back: the router puts it back; the conversation stays where it moved
        await stopped.StartHttpAsync();
        await RouterRig.WaitForHealth(_http, b1.Replica, healthy: true);
        var b3 = await RouterRig.Complete(_http, RouterRig.Body(first + b1.Text + question + b2.Text, 4), "interrupted");
        Assert.That(b3.Replica, Is.EqualTo(b2.Replica));
        Assert.That(b3.Reason, Is.EqualTo("session"));
    }

    [Test]
    public async Task WithNoReplicaInTheRouterAnswers503InOpenAisShapeAndRecovers()
    {
        foreach (var r in _replicas) await r.StopHttpAsync();
        for (int i = 0; i < _replicas.Count; i++) await RouterRig.WaitForHealth(_http, Router.ReplicaId(i), healthy: false);
        using (var health = await _http.GetAsync("/health")) Assert.That(health.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
        using (var r = await _http.PostAsJsonAsync("/v1/completions", RouterRig.Body("In the beginning", 2)))
        {
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
            var error = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
            Assert.That(error.GetProperty("code").GetString(), Is.EqualTo("replica_unavailable"));
            Assert.That(error.GetProperty("message").GetString(), Does.Contain("NoAvailableDestinations"));
        }
        foreach (var r in _replicas) await r.StartHttpAsync();
        for (int i = 0; i < _replicas.Count; i++) await RouterRig.WaitForHealth(_http, Router.ReplicaId(i), healthy: true);
        await RouterRig.Complete(_http, RouterRig.Body("In the beginning", 2));
    }
}

/// <summary>
/// A conversation moved with its state (docs/routing.md, "Moving a conversation"): two one-slot replicas with the internal
/// token and a router that has it too. When the conversation's replica drains, or is full while the other has a free
/// slot, its next turn goes to the other replica, after the router handed over the state of the turn before (a
/// prefix-cache hit there); the greedy text equals what the first replica gives the same turn.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class RouterHandOffTests() : RouterFixture(2, maxBatch: 1, token: Token)
{
    private const string Token = "router-hand-off";

    [OneTimeSetUp]
    public async Task WaitForLoadReports()
    {
        for (int i = 0; i < _replicas.Count; i++) await RouterRig.WaitForReplica(_http, Router.ReplicaId(i), r => r.GetProperty("load").ValueKind == JsonValueKind.Object, "reporting its load");
    }

    private static async Task<HttpStatusCode> Drain(ShippedModelServer replica, bool on, string? token = Token)
    {
        using var request = new HttpRequestMessage(on ? HttpMethod.Post : HttpMethod.Delete, "/internal/drain");
        if (token is not null) request.Headers.Add(OpenAiServer.InternalTokenHeader, token);
        using var r = await replica.Http.SendAsync(request);
        return r.StatusCode;
    }

    /// <summary>Checks a moved turn: another replica, the hand-off of <paramref name="tokens"/> tokens, a cache hit there, the home replica's text.</summary>
    private async Task CheckMoved(RouterRig.Answer turn, string home, int[] prompt, int tokens, double hitsBefore, ShippedModelServer other)
    {
        Assert.That(turn.Replica, Is.Not.EqualTo(home), $"{turn}");
        Assert.That(turn.Reason, Is.EqualTo("moved"));
        Assert.That(turn.HandOff, Does.StartWith($"{home}; moved; tokens={tokens}; bytes="), "the state of the turn before was handed over");
        Assert.That(await RouterRig.Metric(other.Http, "xlstm_prefix_cache_hits"), Is.EqualTo(hitsBefore + 1), "the new replica starts from the handed-over state");
        // as if it had stayed: the home replica still holds the state and answers the same turn (straight, not through the router)
        var stayed = await RouterRig.Complete(Replica(home).Http, RouterRig.Body(prompt, 12), direct: true);
        Assert.That(turn.Ids, Is.EqualTo(stayed.Ids), "greedy tokens of the moved turn against the replica it left");
        Assert.That(await RouterRig.Metric(_http, "xlstm_router_handoffs"), Is.GreaterThanOrEqualTo(1));
    }

    /// <summary>A conversation's first turn (40 random ids) through <paramref name="http"/>: its prompt, the next turn's new ids, the answer, its replica and the other one.</summary>
    private async Task<(int[] First, int[] Question, RouterRig.Answer T1, ShippedModelServer Home, ShippedModelServer Other)> FirstTurn(HttpClient http, int seed, string session)
    {
        var rng = new Random(seed);
        int[] first = RouterRig.Ids(rng, 40, _vocab), question = RouterRig.Ids(rng, 6, _vocab);
        var t1 = await RouterRig.Complete(http, RouterRig.Body(first, 12), session);
        var home = Replica(t1.Replica);
        return (first, question, t1, home, _replicas.Single(r => r != home));
    }

    [Test]
    public async Task AConversationLeavesADrainingReplicaWithItsState()
    {
        var (first, question, t1, home, other) = await FirstTurn(_http, 31, "draining");

        Assert.That(await Drain(home, on: true, token: "wrong"), Is.EqualTo(HttpStatusCode.Unauthorized));
        Assert.That(await Drain(home, on: true), Is.EqualTo(HttpStatusCode.OK));
        await RouterRig.WaitForReplica(_http, t1.Replica, r => r.GetProperty("draining").GetBoolean() && !r.GetProperty("healthy").GetBoolean(), "draining and out");
        using (var health = await home.Http.GetAsync("/health"))
        {
            Assert.That(health.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
            Assert.That(health.Headers.GetValues(ReplicaLoad.StateHeader).Single(), Is.EqualTo("draining"));
        }
        double hits = await RouterRig.Metric(other.Http, "xlstm_prefix_cache_hits");
        int[] second = [.. first, .. t1.Ids, .. question];
        var t2 = await RouterRig.Complete(_http, RouterRig.Body(second, 12), "draining");
        await CheckMoved(t2, t1.Replica, second, first.Length, hits, other);
        // the conversation stays where it moved, also once the old replica is back
        Assert.That(await Drain(home, on: false), Is.EqualTo(HttpStatusCode.OK));
        await RouterRig.WaitForHealth(_http, t1.Replica, healthy: true);
        int[] third = [.. second, .. t2.Ids];
        var t3 = await RouterRig.Complete(_http, RouterRig.Body(third, 2), "draining");
        Assert.That((t3.Replica, t3.Reason, t3.HandOff), Is.EqualTo((t2.Replica, "session", (string?)null)));
    }

    /// <summary>
    /// Under <see cref="RouterOptions.HandOffMinTokens"/> (its default, 12,288: a 40-token conversation) the moving
    /// conversation is read again on the new replica instead (no cache hit there), with the same greedy text.
    /// </summary>
    [Test]
    public Task AShortConversationIsReadAgainInsteadOfHandedOver() => MovesWithoutItsState(Token, handOffMinTokens: null, seed: 33, "short");

    /// <summary>
    /// A hand-off that fails (here: the router's token is not the replicas', so the export answers 401) leaves the turn
    /// to be read again on the new replica, with the same greedy text; the answer says it failed.
    /// </summary>
    [Test]
    public Task AFailedHandOffLeavesTheTurnToBeReadAgain() => MovesWithoutItsState("not-the-replicas-token", handOffMinTokens: 0, seed: 34, "failed");

    /// <summary>
    /// A second router in front of the replicas, with <paramref name="token"/> and the threshold (null: the default):
    /// a conversation's replica drains, and its next turn moves without its state (<paramref name="expected"/> in
    /// <see cref="StateHandOff.Header"/>): no cache hit on the new replica, the old replica's greedy tokens.
    /// </summary>
    private async Task MovesWithoutItsState(string token, int? handOffMinTokens, int seed, string expected)
    {
        var options = new RouterOptions
        {
            Replicas = [.. _replicas.Select(r => r.Url)],
            Port = 0,
            HealthInterval = TimeSpan.FromMilliseconds(200),
            InternalToken = token,
        };
        if (handOffMinTokens is { } min) options = options with { HandOffMinTokens = min };
        var (router, url) = await Router.StartAsync(options, NullLoggerProvider.Instance);
        await using var _ = router;
        using var http = new HttpClient { BaseAddress = new Uri(url) };
        for (int i = 0; i < _replicas.Count; i++) await RouterRig.WaitForReplica(http, Router.ReplicaId(i), r => r.GetProperty("healthy").GetBoolean(), "in");
        string session = $"without-{expected}";
        var (first, question, t1, home, other) = await FirstTurn(http, seed, session);
        Assert.That(await Drain(home, on: true), Is.EqualTo(HttpStatusCode.OK));
        try
        {
            await RouterRig.WaitForReplica(http, t1.Replica, r => r.GetProperty("draining").GetBoolean(), "draining");
            double hits = await RouterRig.Metric(other.Http, "xlstm_prefix_cache_hits");
            int[] second = [.. first, .. t1.Ids, .. question];
            var t2 = await RouterRig.Complete(http, RouterRig.Body(second, 12), session);
            Assert.That((t2.Reason, t2.HandOff), Is.EqualTo(("moved", (string?)$"{t1.Replica}; {expected}")));
            Assert.That(await RouterRig.Metric(other.Http, "xlstm_prefix_cache_hits"), Is.EqualTo(hits), "read again: no cache hit");
            Assert.That(await RouterRig.Metric(http, "xlstm_router_handoffs"), Is.EqualTo(1), $"one hand-off counted ({expected})");
            var stayed = await RouterRig.Complete(home.Http, RouterRig.Body(second, 12), direct: true);
            Assert.That(t2.Ids, Is.EqualTo(stayed.Ids));
        }
        finally
        {
            await Drain(home, on: false);
            await RouterRig.WaitForHealth(_http, t1.Replica, healthy: true);
        }
    }

    [Test]
    public async Task AConversationLeavesAFullReplicaWithItsState()
    {
        var (first, question, t1, home, other) = await FirstTurn(_http, 32, "full");
        var rng = new Random(132);
        // someone else's long stream fills the home replica's only slot (sent straight to it: the router sees it only in the replica's /health)
        var longBody = RouterRig.Body(RouterRig.Ids(rng, 8, _vocab), 2000);
        longBody["stream"] = true;
        longBody["ignore_eos"] = true;
        using var busy = new CancellationTokenSource();
        using var longRequest = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(longBody) };
        using var stream = await home.Http.SendAsync(longRequest, HttpCompletionOption.ResponseHeadersRead, busy.Token);
        Assert.That(stream.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        await RouterRig.WaitForReplica(_http, t1.Replica, r => r.GetProperty("load").GetProperty("running").GetInt32() == 1, "running the long stream");

        double hits = await RouterRig.Metric(other.Http, "xlstm_prefix_cache_hits");
        int[] second = [.. first, .. t1.Ids, .. question];
        var t2 = await RouterRig.Complete(_http, RouterRig.Body(second, 12), "full");
        await busy.CancelAsync();
        stream.Dispose();
        await CheckMoved(t2, t1.Replica, second, first.Length, hits, other);
    }
}

/// <summary>
/// What the router fixtures share: <paramref name="replicas"/> replicas of the shipped model and a router in front of
/// them (<see cref="RouterRig.StartAsync"/>), started once for the fixture and stopped after it.
/// </summary>
public abstract class RouterFixture(int replicas, int maxBatch = 4, string? token = null)
{
    private protected List<ShippedModelServer> _replicas = [];
    private protected WebApplication _router = null!;
    private protected HttpClient _http = null!;
    private protected int _vocab;

    [OneTimeSetUp]
    public async Task StartRig()
    {
        (_replicas, _router, _http) = await RouterRig.StartAsync(replicas, maxBatch, token);
        _vocab = (int)_replicas[0].Session.Manifest.VocabSize;
    }

    [OneTimeTearDown]
    public async Task StopRig() => await RouterRig.StopAsync(_replicas, _router, _http);

    /// <summary>The replica a router header names (r0, r1, ...).</summary>
    private protected ShippedModelServer Replica(string id) => _replicas[int.Parse(id[1..], System.Globalization.CultureInfo.InvariantCulture)];
}

/// <summary>Replicas of the shipped model and a router in front of them, and the requests the router tests send.</summary>
internal static class RouterRig
{
    /// <summary>A completion's replica and rule (router headers; empty when sent straight to a replica), the hand-off header if any, text and ids.</summary>
    public sealed record Answer(string Replica, string Reason, string Text, int[] Ids, string? HandOff = null);

    /// <summary><paramref name="count"/> replicas of <paramref name="maxBatch"/> slots (with the internal <paramref name="token"/>, if given, on them and the router).</summary>
    public static async Task<(List<ShippedModelServer>, WebApplication, HttpClient)> StartAsync(int count, int maxBatch = 4, string? token = null)
    {
        var replicas = new List<ShippedModelServer>();
        for (int i = 0; i < count; i++)
        {
            replicas.Add(await ShippedModelServer.StartAsync(new ServingOptions { MaxBatch = maxBatch, QueueCapacity = 64 },
                new ServerOptions { ModelId = "kjv", MaxPromptTokens = 512, Logs = NullLoggerProvider.Instance, InternalToken = token }));
        }
        var (router, http) = await StartRouterAsync(replicas, token);
        return (replicas, router, http);
    }

    /// <summary>A router in front of <paramref name="replicas"/> on a free port, and a client of it.</summary>
    public static async Task<(WebApplication, HttpClient)> StartRouterAsync(IReadOnlyList<ShippedModelServer> replicas, string? token = null)
    {
        var (router, url) = await Router.StartAsync(new RouterOptions
        {
            Replicas = [.. replicas.Select(r => r.Url)],
            Port = 0,
            HealthInterval = TimeSpan.FromMilliseconds(200), // the failover test waits for it
            PrefixBlockTokens = 8,
            InternalToken = token,
            HandOffMinTokens = 0, // the shipped model's state is small: handing it over is always the faster way here
        }, Environment.GetEnvironmentVariable("XLSTM_ROUTER_TEST_LOGS") == "1" ? null : NullLoggerProvider.Instance);
        return (router, new HttpClient { BaseAddress = new Uri(url) });
    }

    public static async Task StopAsync(List<ShippedModelServer> replicas, WebApplication router, HttpClient http)
    {
        http.Dispose();
        await router.DisposeAsync();
        foreach (var r in replicas) await r.DisposeAsync();
    }

    public static int[] Ids(Random rng, int n, int vocab) => [.. Enumerable.Range(0, n).Select(_ => 1 + rng.Next(vocab - 1))];

    public static Dictionary<string, object?> Body(object prompt, int maxTokens, string? user = null)
    {
        var body = new Dictionary<string, object?> { ["model"] = "kjv", ["prompt"] = prompt, ["max_tokens"] = maxTokens, ["temperature"] = 0, ["return_token_ids"] = true };
        if (user is not null) body["user"] = user;
        return body;
    }

    /// <summary>A greedy completion; the replica and the rule from the router's headers (none when <paramref name="direct"/>).</summary>
    public static async Task<Answer> Complete(HttpClient http, object body, string? session = null, bool direct = false)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(body) };
        if (session is not null) request.Headers.Add(RouteKeys.SessionHeader, session);
        using var r = await http.SendAsync(request);
        string text = await r.Content.ReadAsStringAsync();
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK), text);
        var choice = JsonDocument.Parse(text).RootElement.GetProperty("choices")[0];
        string replica = direct ? "" : r.Headers.GetValues(Router.ReplicaHeader).Single();
        string reason = direct ? "" : r.Headers.GetValues(Router.ReasonHeader).Single();
        string? handOff = r.Headers.TryGetValues(StateHandOff.Header, out var h) ? h.Single() : null;
        return new Answer(replica, reason, choice.GetProperty("text").GetString()!, [.. choice.GetProperty("token_ids").EnumerateArray().Select(e => e.GetInt32())], handOff);
    }

    /// <summary>A chat completion through the router: the replica and the rule from its headers.</summary>
    public static async Task<(string Replica, string Reason)> Chat(HttpClient http, object body)
    {
        using var r = await http.PostAsJsonAsync("/v1/chat/completions", body);
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK), await r.Content.ReadAsStringAsync());
        return (r.Headers.GetValues(Router.ReplicaHeader).Single(), r.Headers.GetValues(Router.ReasonHeader).Single());
    }

    /// <summary>The sum of a Prometheus metric's samples (every label set) at <c>/metrics</c>.</summary>
    public static async Task<double> Metric(HttpClient http, string name)
    {
        string text = await http.GetStringAsync("/metrics");
        return text.Split('\n').Where(l => l.StartsWith(name + "{", StringComparison.Ordinal) || l.StartsWith(name + " ", StringComparison.Ordinal)
                || l.StartsWith(name + "_total", StringComparison.Ordinal))
            .Sum(l => double.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>Waits (5 s at most) until the router's /health entry of <paramref name="replica"/> satisfies <paramref name="holds"/>.</summary>
    public static async Task WaitForReplica(HttpClient http, string replica, Func<JsonElement, bool> holds, string what)
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (true)
        {
            using var r = await http.GetAsync("/health");
            var doc = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement;
            var state = doc.GetProperty("replicas").EnumerateArray().Single(e => e.GetProperty("id").GetString() == replica);
            if (holds(state)) return;
            if (DateTime.UtcNow > until) Assert.Fail($"replica {replica}: not {what} after 5 s: {state}");
            await Task.Delay(50);
        }
    }

    /// <summary>Waits (5 s at most) until the router's /health says <paramref name="replica"/> is (un)healthy.</summary>
    public static async Task WaitForHealth(HttpClient http, string replica, bool healthy)
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (true)
        {
            using var r = await http.GetAsync("/health");
            var doc = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement;
            var state = doc.GetProperty("replicas").EnumerateArray().Single(e => e.GetProperty("id").GetString() == replica);
            if (state.GetProperty("healthy").GetBoolean() == healthy) return;
            if (DateTime.UtcNow > until) Assert.Fail($"replica {replica} not {(healthy ? "healthy" : "unhealthy")} after 5 s: {state}");
            await Task.Delay(50);
        }
    }
}
