using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using NUnit.Framework;
using XLstmOnnx.Cli.Serving;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// The prefix hand-off between two replicas (docs/routing.md, "Handing a state over"): a prefix state exported from
/// one server and imported into another continues there exactly as on the first, as a prefix-cache hit; the endpoints
/// need the internal token and refuse bad files with 400.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class PrefixHandOffTests
{
    private const string Token = "hand-off-secret";
    private ShippedModelServer _a = null!, _b = null!;

    [OneTimeSetUp]
    public async Task Start()
    {
        var serving = new ServingOptions { MaxBatch = 4, QueueCapacity = 16 };
        var server = new ServerOptions { ModelId = "kjv", MaxPromptTokens = 512, Logs = NullLoggerProvider.Instance, InternalToken = Token };
        _a = await ShippedModelServer.StartAsync(serving, server);
        _b = await ShippedModelServer.StartAsync(serving, server);
    }

    [OneTimeTearDown]
    public async Task Stop()
    {
        await _a.DisposeAsync();
        await _b.DisposeAsync();
    }

    private static async Task<HttpResponseMessage> Post(HttpClient http, string path, HttpContent content, string? token = Token)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = content };
        if (token is not null) request.Headers.Add(OpenAiServer.InternalTokenHeader, token);
        return await http.SendAsync(request);
    }

    [Test]
    public async Task AnExportedPrefixContinuesOnAnotherReplicaAsOnTheFirst()
    {
        var rng = new Random(21);
        int vocab = (int)_a.Session.Manifest.VocabSize;
        int[] prefix = RouterRig.Ids(rng, 40, vocab), longer = [.. prefix, .. RouterRig.Ids(rng, 9, vocab)];
        await RouterRig.Complete(_a.Http, RouterRig.Body(prefix, 6), direct: true); // A reads the prefix and caches its state

        using var exported = await Post(_a.Http, "/internal/prefix/export", JsonContent.Create(new { model = "kjv", prompt = prefix }));
        Assert.That(exported.StatusCode, Is.EqualTo(HttpStatusCode.OK), await exported.Content.ReadAsStringAsync());
        Assert.That(exported.Headers.GetValues("X-Prefix-Tokens").Single(), Is.EqualTo("40"));
        byte[] file = await exported.Content.ReadAsByteArrayAsync();
        using var imported = await Post(_b.Http, "/internal/prefix/import", new ByteArrayContent(file));
        var answer = JsonDocument.Parse(await imported.Content.ReadAsStringAsync()).RootElement;
        Assert.That(imported.StatusCode, Is.EqualTo(HttpStatusCode.OK), answer.ToString());
        Assert.That(answer.GetProperty("tokens").GetInt32(), Is.EqualTo(40));
        Assert.That(answer.GetProperty("stored").GetBoolean(), Is.True);

        double hits = await RouterRig.Metric(_b.Http, "xlstm_prefix_cache_hits");
        var onB = await RouterRig.Complete(_b.Http, RouterRig.Body(longer, 8), direct: true);
        Assert.That(await RouterRig.Metric(_b.Http, "xlstm_prefix_cache_hits"), Is.EqualTo(hits + 1), "B starts from the imported state");
        var onA = await RouterRig.Complete(_a.Http, RouterRig.Body(longer, 8), direct: true);
        Assert.That(onB.Ids, Is.EqualTo(onA.Ids), "greedy tokens after the moved prefix, B against A");
        // the same file again: B holds it already
        using var again = await Post(_b.Http, "/internal/prefix/import", new ByteArrayContent(file));
        Assert.That(JsonDocument.Parse(await again.Content.ReadAsStringAsync()).RootElement.GetProperty("stored").GetBoolean(), Is.False);
    }

    [Test]
    public async Task TheEndpointsNeedTheTokenAndRefuseBadInput()
    {
        foreach (string? token in new[] { null, "wrong" })
        {
            using var r = await Post(_a.Http, "/internal/prefix/export", JsonContent.Create(new { model = "kjv", prompt = new[] { 1, 2 } }), token);
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized), token ?? "no token");
            Assert.That(await r.Content.ReadAsStringAsync(), Does.Contain("invalid_internal_token").And.Contain(OpenAiServer.InternalTokenHeader));
        }
        using (var none = await Post(_a.Http, "/internal/prefix/export", JsonContent.Create(new { model = "kjv", prompt = new[] { 7, 7, 7, 7, 7, 3 } })))
        {
            Assert.That(none.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
            Assert.That(await none.Content.ReadAsStringAsync(), Does.Contain("prefix_not_cached").And.Contain("6 prompt tokens"));
        }
        // a text prompt is read as the completions API reads it: its state is cached after a completion of that text
        const string light = "And God said, Let there be light: and there was light.";
        await RouterRig.Complete(_a.Http, RouterRig.Body(light, 2), direct: true);
        using (var byText = await Post(_a.Http, "/internal/prefix/export", JsonContent.Create(new { model = "kjv", prompt = light })))
        {
            Assert.That(byText.StatusCode, Is.EqualTo(HttpStatusCode.OK), await byText.Content.ReadAsStringAsync());
            Assert.That(int.Parse(byText.Headers.GetValues("X-Prefix-Tokens").Single()), Is.EqualTo(_a.Session.Tokenizer!.Encode(light).Length));
        }
        using (var bad = await Post(_b.Http, "/internal/prefix/import", new ByteArrayContent([1, 2, 3, 4, 5, 6, 7, 8, 9])))
        {
            Assert.That(bad.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
            string text = await bad.Content.ReadAsStringAsync();
            Assert.That(text, Does.Contain("invalid_prefix_state").And.Not.Contain(Path.GetTempPath()));
        }
    }
}
