using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using XLstmOnnx.Cli.Serving;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// /metrics (OpenTelemetry's Prometheus exporter over the engine's System.Diagnostics.Metrics instruments) and the request
/// log, on a server of their own with the shipped model: the exposition is parsed strictly, and its counts are checked
/// against the requests made and the usage the responses report.
/// </summary>
[TestFixture]
[NonParallelizable]
public class MetricsTests
{
    private ShippedModelServer _server = null!;
    private string _model => _server.Model;
    private XLstmSession _session => _server.Session;
    private ServingEngine _engine => _server.Engine;
    private HttpClient _http => _server.Http;
    private readonly LogCapture _logs = new();

    private static readonly Dictionary<string, string> Model = new() { ["model_name"] = "kjv" };

    private static readonly (string Name, IReadOnlyList<double> Buckets)[] Histograms =
    [
        ("xlstm_time_to_first_token_seconds", ServingMetrics.TimeToFirstTokenBuckets),
        ("xlstm_inter_token_latency_seconds", ServingMetrics.InterTokenLatencyBuckets),
        ("xlstm_e2e_request_latency_seconds", ServingMetrics.RequestLatencyBuckets),
        ("xlstm_decode_step_seconds", ServingMetrics.DecodeStepBuckets),
        ("xlstm_decode_step_sequences", ServingMetrics.BatchSizeBuckets),
    ];

    [OneTimeSetUp]
    public async Task Start() => _server = await ShippedModelServer.StartAsync(new ServingOptions { MaxBatch = 4, QueueCapacity = 16 },
        new ServerOptions { ModelId = "kjv", Logs = _logs });

    [OneTimeTearDown]
    public async Task Stop() => await _server.DisposeAsync();

    private async Task<PrometheusText> Scrape(HttpClient? http = null)
    {
        using var r = await (http ?? _http).GetAsync("/metrics");
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(r.Content.Headers.ContentType?.MediaType, Is.EqualTo("text/plain"));
        return PrometheusText.Parse(await r.Content.ReadAsStringAsync());
    }

    /// <summary>
    /// Waits (up to 10 s) for <paramref name="condition"/>: the engine frees a slot, and the server logs a request, just
    /// after the client has its last byte.
    /// </summary>
    private static async Task<bool> Eventually(Func<Task<bool>> condition)
    {
        for (int i = 0; i < 200; i++)
        {
            if (await condition()) return true;
            await Task.Delay(50);
        }
        return false;
    }

    private async Task<JsonElement> Complete(object body, HttpClient? http = null)
    {
        using var r = await (http ?? _http).PostAsJsonAsync("/v1/completions", body);
        string text = await r.Content.ReadAsStringAsync();
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK), text);
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    /// <summary>Streams a completion; returns the number of chunks (one per token) and the finish reason.</summary>
    private async Task<(int Chunks, string Finish)> Stream(object body, CancellationToken cancel = default)
    {
        using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(body) };
        using var r = await _http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, cancel);
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        using var reader = new StreamReader(await r.Content.ReadAsStreamAsync(cancel));
        int chunks = 0;
        string finish = "";
        while (await reader.ReadLineAsync(cancel) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]") continue;
            chunks++;
            var reason = JsonDocument.Parse(line[6..]).RootElement.GetProperty("choices")[0].GetProperty("finish_reason");
            if (reason.ValueKind == JsonValueKind.String) finish = reason.GetString()!;
        }
        return (chunks, finish);
    }

    [Test]
    public async Task CountersAndHistogramsMatchTheRequests()
    {
        var before = await Scrape();
        int[] scripture = _session.Tokenizer!.Encode("And it came to pass in those days, that there went out a decree");
        int[] other = _session.Tokenizer!.Encode("Blessed are the meek");
        Assume.That(scripture, Has.Length.GreaterThanOrEqualTo(new ServingOptions().PrefixCacheMinTokens), "long enough to be cached");
        Assume.That(other, Has.Length.LessThan(new ServingOptions().PrefixCacheMinTokens), "too short to be cached");
        int prompt = 0, completion = 0, requests = 0;
        var finishes = new Dictionary<string, int> { ["length"] = 0, ["stop"] = 0 };

        // one at a time, so that each prefix-cache lookup sees what the earlier requests left
        async Task Json(int[] ids, int maxTokens, int n = 1, bool ignoreEos = true)
        {
            var r = await Complete(new { model = "kjv", prompt = ids, max_tokens = maxTokens, n, temperature = 0.8, seed = 3, ignore_eos = ignoreEos });
            prompt += r.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
            completion += r.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
            requests += n;
            foreach (var c in r.GetProperty("choices").EnumerateArray()) finishes[c.GetProperty("finish_reason").GetString()!]++;
        }
        await Json(scripture, 7);                           // miss: cached afterwards
        await Json(scripture, 3);                           // hit: the whole prompt
        await Json([.. scripture, .. other], 5);            // hit: its prefix
        await Json(other, 4, n: 2);                         // two misses
        await Json(other, 200, ignoreEos: false);           // may stop at EOS before 200: finish "stop" or "length"
        var streamed = await Stream(new { model = "kjv", prompt = other.Take(3).ToArray(), max_tokens = 6, stream = true, temperature = 0, ignore_eos = true });
        prompt += 3;
        completion += streamed.Chunks;
        requests++;
        finishes[streamed.Finish]++;
        Assert.That(streamed, Is.EqualTo((6, "length")));

        Assert.That(await Eventually(async () => (await Scrape()).Value("xlstm_num_requests_running") == 0), "all slots are freed");
        var after = await Scrape();
        double Delta(string selector) => after.Value(selector) - before.Value(selector);
        Assert.Multiple(() =>
        {
            Assert.That(Delta("xlstm_prompt_tokens_total{model_name=\"kjv\"}"), Is.EqualTo(prompt), "prompt tokens = the responses' usage");
            Assert.That(Delta("xlstm_generation_tokens_total{model_name=\"kjv\"}"), Is.EqualTo(completion), "generation tokens = the responses' usage");
            Assert.That(Delta("xlstm_time_to_first_token_seconds_count"), Is.EqualTo(requests), "one first token per sequence (n counts each)");
            Assert.That(Delta("xlstm_e2e_request_latency_seconds_count"), Is.EqualTo(requests), "one latency per completed sequence");
            Assert.That(Delta("xlstm_inter_token_latency_seconds_count"), Is.EqualTo(completion - requests), "one gap per token after the first");
            Assert.That(Delta("xlstm_request_success_total{finished_reason=\"length\"}"), Is.EqualTo(finishes["length"]));
            Assert.That(Delta("xlstm_request_success_total{finished_reason=\"stop\"}"), Is.EqualTo(finishes["stop"]));
            Assert.That(Delta("xlstm_request_success_total{finished_reason=\"abort\"}"), Is.Zero);
            Assert.That(Delta("xlstm_prefix_cache_queries_total"), Is.EqualTo(requests), "every admitted sequence looks its prompt up");
            Assert.That(Delta("xlstm_prefix_cache_hits_total"), Is.EqualTo(2), "the repeated prompt and the extended one");
            Assert.That(after.Value("xlstm_prefix_cache_entries"), Is.GreaterThanOrEqualTo(1));
            Assert.That(after.Value("xlstm_prefix_cache_bytes"), Is.GreaterThan(0));
            Assert.That(after.Value("xlstm_num_requests_waiting"), Is.Zero);
            Assert.That(Delta("xlstm_decode_step_sequences_sum"), Is.EqualTo(completion - requests),
                "each step decodes one token of each live sequence; first tokens come from the prefill");
            Assert.That(Delta("xlstm_time_to_first_token_seconds_sum"), Is.GreaterThan(0));
        });
    }

    [Test]
    public async Task TheStatePoolUsageIsRunningOverSlots()
    {
        // the Gateway API Inference Extension's KV-cache gauge (docs/routing.md): a fraction, running / --max-batch (4 here)
        using var cancel = new CancellationTokenSource();
        var stream = Task.Run(async () =>
        {
            try
            {
                await Stream(new { model = "kjv", prompt = "And the LORD spake unto Moses", max_tokens = 2000, stream = true, temperature = 0, ignore_eos = true }, cancel.Token);
            }
            catch (OperationCanceledException)
            {
            }
        });
        Assert.That(await Eventually(async () => (await Scrape()).Value("xlstm_num_requests_running") == 1), "one sequence running");
        var during = await Scrape();
        Assert.That(during.Value("xlstm_kv_cache_usage_perc"), Is.EqualTo(during.Value("xlstm_num_requests_running") / 4.0));
        cancel.Cancel();
        await stream;
        Assert.That(await Eventually(async () => (await Scrape()).Value("xlstm_kv_cache_usage_perc") == 0), "no slot in use once it ends");
    }

    [Test]
    public async Task TheExpositionIsWellFormedPrometheusText()
    {
        await Complete(new { model = "kjv", prompt = "And the LORD said", max_tokens = 6, temperature = 0, ignore_eos = true });
        var m = await Scrape();
        Assert.That(m.Types, Does.ContainKey("xlstm_time_to_first_token_seconds").WithValue("histogram"));
        foreach (string counter in new[] { "xlstm_prompt_tokens_total", "xlstm_generation_tokens_total", "xlstm_request_success_total", "xlstm_prefix_cache_hits_total", "xlstm_prefix_cache_queries_total" })
        {
            Assert.That(m.Types, Does.ContainKey(counter).WithValue("counter"), counter);
        }
        foreach (string gauge in new[] { "xlstm_num_requests_running", "xlstm_num_requests_waiting", "xlstm_kv_cache_usage_perc", "xlstm_prefix_cache_bytes", "xlstm_prefix_cache_entries" })
        {
            Assert.That(m.Types, Does.ContainKey(gauge).WithValue("gauge"), gauge);
        }
        var ours = m.Samples.Where(s => s.Name.StartsWith("xlstm_", StringComparison.Ordinal)).ToList();
        Assert.That(ours, Is.Not.Empty);
        Assert.That(ours.Where(s => !s.Has(Model)).Select(s => s.Name), Is.Empty, "every series carries model_name, as vLLM's do");

        foreach (var (name, buckets) in Histograms)
        {
            var h = m.Histogram(name, Model);
            var bounds = h.Buckets.Select(b => b.Le).ToList();
            Assert.That(bounds, Is.EqualTo(buckets.Append(double.PositiveInfinity)), $"{name}: the boundaries the instrument advises, then +Inf");
            Assert.That(h.Buckets.Select(b => b.Count), Is.Ordered, $"{name}: buckets are cumulative, so never decrease");
            Assert.That(h.Buckets[^1].Count, Is.EqualTo(h.Count), $"{name}: the +Inf bucket counts everything");
            Assert.That(h.Count, Is.GreaterThan(0), name);
            Assert.That(h.Sum, Is.GreaterThan(0), name);
            // the sum lies within what the buckets allow: no observation exceeds its bucket's upper bound
            double upper = 0, below = 0;
            foreach (var (le, count) in h.Buckets)
            {
                if (count > below) upper += (count - below) * le;
                below = count;
            }
            if (double.IsFinite(upper)) Assert.That(h.Sum, Is.LessThanOrEqualTo(upper + 1e-9), $"{name}: sum within the bucket bounds");
        }
    }

    [Test]
    public async Task EachRequestIsLoggedOnceWithItsUsageAndTimes()
    {
        var r = await Complete(new { model = "kjv", prompt = "In the beginning", max_tokens = 4, temperature = 0, ignore_eos = true });
        string id = r.GetProperty("id").GetString()!;
        using (var bad = await _http.PostAsJsonAsync("/v1/completions", new { model = "nope", prompt = "x" }))
        {
            Assert.That(bad.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        }
        List<LogCapture.Entry> lines = [];
        await Eventually(() =>
        {
            lines = _logs.Entries.Where(e => e.Category == OpenAiServer.RequestLogCategory).ToList();
            return Task.FromResult(lines.Any(e => e.Message.Contains(id, StringComparison.Ordinal)) && lines.Any(e => e.Message.Contains(" 404 ", StringComparison.Ordinal)));
        });

        var ok = lines.Where(e => e.Message.Contains(id, StringComparison.Ordinal)).ToList();
        Assert.That(ok, Has.Count.EqualTo(1), "one line per request");
        var line = ok[0];
        Assert.That(line.Level, Is.EqualTo(LogLevel.Information));
        Assert.That(line.Message, Does.StartWith($"{id} /v1/completions 200 prompt_tokens={r.GetProperty("usage").GetProperty("prompt_tokens").GetInt32()} completion_tokens=4 ttft_ms="));
        double ttft = Convert.ToDouble(line.State["TtftMs"]), e2e = Convert.ToDouble(line.State["E2eMs"]);
        Assert.That(ttft, Is.GreaterThan(0).And.LessThanOrEqualTo(e2e), "the first token comes before the end");

        var refused = lines.Where(e => e.Message.Contains(" 404 ", StringComparison.Ordinal)).ToList();
        Assert.That(refused, Has.Count.EqualTo(1));
        Assert.That(refused[0].Level, Is.EqualTo(LogLevel.Warning), "refused requests are warnings");
        Assert.That(refused[0].Message, Does.Contain("/v1/completions 404").And.Contain("'nope' does not exist"));
        Assert.That(lines.Where(e => e.Message.Contains("/metrics", StringComparison.Ordinal)), Is.Empty, "scrapes are not requests");
    }

    [Test]
    public async Task AServerOfItsOwnEngineCountsOnlyItsOwnRequestsAndLogsAtItsLevel()
    {
        using var session = XLstmSession.Load(_model);
        using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 1 });
        var logs = new LogCapture();
        var (app, url) = await OpenAiServer.StartAsync(engine, new ServerOptions { Port = 0, ModelId = "second", Logs = logs, LogLevel = LogLevel.Warning });
        await using var _ = app;
        using var http = new HttpClient { BaseAddress = new Uri(url) };
        await Complete(new { model = "second", prompt = "And", max_tokens = 3, temperature = 0, ignore_eos = true }, http);
        await Complete(new { model = "kjv", prompt = "And", max_tokens = 2, temperature = 0, ignore_eos = true }); // the other server
        using (var bad = await http.PostAsJsonAsync("/v1/completions", new { model = "second", prompt = "And", max_tokens = 0 }))
        {
            Assert.That(bad.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        }

        var m = await Scrape(http);
        Assert.That(m.Value("xlstm_generation_tokens_total"), Is.EqualTo(3), "this engine's tokens only");
        Assert.That(m.Value("xlstm_generation_tokens_total{model_name=\"second\"}"), Is.EqualTo(3));
        Assert.That(m.Value("xlstm_time_to_first_token_seconds_count"), Is.EqualTo(1));
        List<LogCapture.Entry> lines = [];
        await Eventually(() =>
        {
            lines = logs.Entries.Where(e => e.Category == OpenAiServer.RequestLogCategory).ToList();
            return Task.FromResult(lines.Count > 0);
        });
        await Task.Delay(200); // and nothing else comes
        lines = logs.Entries.Where(e => e.Category == OpenAiServer.RequestLogCategory).ToList();
        Assert.That(lines.Select(e => e.Level), Is.EqualTo(new[] { LogLevel.Warning }), "at Warning only the refused request is logged");
        Assert.That(lines[0].Message, Does.Contain("400").And.Contain("max_tokens"));
    }

    /// <summary>Collects log entries in memory: category, level, formatted message and named values.</summary>
    private sealed class LogCapture : ILoggerProvider
    {
        public sealed record Entry(string Category, LogLevel Level, string Message, IReadOnlyDictionary<string, object?> State);

        private readonly ConcurrentQueue<Entry> _entries = new();

        public IReadOnlyList<Entry> Entries => [.. _entries];

        public ILogger CreateLogger(string categoryName) => new Logger(categoryName, _entries);

        public void Dispose()
        {
        }

        private sealed class Logger(string category, ConcurrentQueue<Entry> entries) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                var values = state as IReadOnlyList<KeyValuePair<string, object?>> ?? [];
                entries.Enqueue(new Entry(category, logLevel, formatter(state, exception), values.ToDictionary(v => v.Key, v => v.Value)));
            }
        }
    }
}
