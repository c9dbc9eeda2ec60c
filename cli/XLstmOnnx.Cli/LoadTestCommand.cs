using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace XLstmOnnx.Cli;

/// <summary>
/// <c>xlstm-onnx loadtest --url URL --model-name NAME [--clients 64] [--seconds 60] [--max-tokens 64]
/// [--prompt-tokens 64:160] [--out FILE]</c>: closed-loop streaming clients against a running server on loopback, each
/// sending its next request when the last one ends. Prompts are Bible verses (text) or, with <c>--prompt-tokens</c>,
/// random token ids of a length in a range (models without a tokenizer; every request its own prompt). Reports failed
/// requests (never stops at one), p50/p90/p99 of time to first token, inter-token latency and end-to-end latency, and
/// throughput over the whole run and over the window where every client was busy. After the load, the first
/// <c>--check-alone</c> requests are sent again one at a time and their token ids compared with the ones streamed
/// under load. Before the load, GET /v1/models: no server, a missing <c>--api-key</c> or another model is an error. A 429
/// is sent again after the server's Retry-After plus a jittered exponential backoff (<see cref="RetryDelay"/>); the
/// report counts every 429 (<c>rate_limited_429</c>) and the time waited.
/// </summary>
internal static class LoadTestCommand
{
    private static readonly string[] Verses =
    [
        "In the beginning", "And God said", "And Moses said unto the LORD", "The LORD is my shepherd", "And Jesus answered",
        "Blessed are the poor in spirit", "And it came to pass", "Now the serpent was more subtil", "Let not your heart be troubled",
        "For God so loved the world", "And David said", "Then said Jesus unto them", "Hear, O Israel", "And the angel said unto her",
        "Wisdom is the principal thing", "Vanity of vanities",
    ];

    private sealed record Plan(int Clients, int Seconds, double Warmup, int MaxRequests, int Check, int Unloaded, int LongPrompt);

    private sealed record Settings(string Model, int MaxTokens, (int Min, int Max)? PromptTokens, int? PromptVocab, ulong Seed, bool IgnoreEos, double Temperature);

    public static Command Create()
    {
        var url = new Option<string>("--url") { Description = "Server base URL (loopback), e.g. http://127.0.0.1:8000.", Required = true };
        var model = new Option<string>("--model-name") { Description = "Model id the server serves.", Required = true };
        var clients = new Option<int>("--clients") { Description = "Concurrent closed-loop clients.", DefaultValueFactory = _ => 64 };
        var seconds = new Option<int>("--seconds") { Description = "How long clients keep sending (each finishes its request).", DefaultValueFactory = _ => 60 };
        var warmup = new Option<double>("--warmup-seconds") { Description = "Start of the steady-state throughput window (the first admissions are left out).", DefaultValueFactory = _ => 0 };
        var maxRequests = new Option<int>("--max-requests") { Description = "Upper bound on requests in all.", DefaultValueFactory = _ => 100_000 };
        var maxTokens = new Option<int>("--max-tokens") { Description = "max_tokens of each request.", DefaultValueFactory = _ => 64 };
        var promptTokens = new Option<string?>("--prompt-tokens") { Description = "Random token-id prompts of MIN:MAX tokens (e.g. 64:160) instead of text." };
        var promptVocab = new Option<int?>("--prompt-vocab") { Description = "Random prompt ids are drawn from [0, N) (default: the vocab_size the server reports in /v1/models, else 50000)." };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the random prompts.", DefaultValueFactory = _ => 1 };
        var ignoreEos = new Option<bool>("--ignore-eos") { Description = "Ask for exactly --max-tokens tokens (vLLM's ignore_eos)." };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature (0: greedy); sampled requests carry a seed, so they are checked too.", DefaultValueFactory = _ => 0 };
        var check = new Option<int>("--check-alone") { Description = "Requests sent again alone after the load and compared token by token.", DefaultValueFactory = _ => 16 };
        var unloaded = new Option<int>("--unloaded") { Description = "Requests sent one at a time before the load: the unloaded time to first token.", DefaultValueFactory = _ => 0 };
        var longPrompt = new Option<int>("--long-prompt") { Description = "At the start of the window, one more request with a prompt of N random ids: the others' inter-token latency while it is read." };
        var output = new Option<string?>("--out") { Description = "Write the results as JSON here." };
        var apiKey = new Option<string?>("--api-key") { Description = $"Bearer key of a server started with --api-key (default: ${ServeCommand.ApiKeyVariable})." };
        var cmd = new Command("loadtest", "Load-test a running server with closed-loop streaming clients (loopback only).")
            { url, model, clients, seconds, warmup, maxRequests, maxTokens, promptTokens, promptVocab, seed, ignoreEos, temperature, check, unloaded, longPrompt, output, apiKey };
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            if (r.GetValue(clients) < 1) throw new XLstmOnnxException($"option --clients must be at least 1; found {r.GetValue(clients)}.");
            if (r.GetValue(seconds) < 1) throw new XLstmOnnxException($"option --seconds must be at least 1; found {r.GetValue(seconds)}.");
            if (r.GetValue(maxTokens) < 1) throw new XLstmOnnxException($"option --max-tokens must be at least 1; found {r.GetValue(maxTokens)}.");
            if (r.GetValue(promptVocab) is < 1) throw new XLstmOnnxException($"option --prompt-vocab must be at least 1; found {r.GetValue(promptVocab)}.");
            var settings = new Settings(r.GetValue(model)!, r.GetValue(maxTokens), ParseRange(r.GetValue(promptTokens)), r.GetValue(promptVocab), r.GetValue(seed),
                r.GetValue(ignoreEos), r.GetValue(temperature));
            if (r.GetValue(longPrompt) < 0) throw new XLstmOnnxException($"option --long-prompt must be positive; found {r.GetValue(longPrompt)}.");
            var plan = new Plan(r.GetValue(clients), r.GetValue(seconds), r.GetValue(warmup), r.GetValue(maxRequests), r.GetValue(check), r.GetValue(unloaded), r.GetValue(longPrompt));
            string? key = r.GetValue(apiKey) ?? (Environment.GetEnvironmentVariable(ServeCommand.ApiKeyVariable) is { Length: > 0 } k ? k : null);
            return Run(r.GetValue(url)!, key, settings, plan, r.GetValue(output), string.Join(' ', Environment.GetCommandLineArgs().Skip(1))).GetAwaiter().GetResult();
        }));
        return cmd;
    }

    private static (int, int)? ParseRange(string? text)
    {
        if (text is null) return null;
        var parts = text.Split(':');
        if (parts.Length == 2 && int.TryParse(parts[0], out int a) && int.TryParse(parts[1], out int b) && a >= 1 && b >= a) return (a, b);
        throw new XLstmOnnxException($"option --prompt-tokens must be MIN:MAX with 1 <= MIN <= MAX, e.g. 64:160; found \"{text}\".");
    }

    /// <summary>
    /// One request's outcome; times in ms from the load's start (arrivals) or from the request's start (ttft). After 429s,
    /// the attempt that was served: its latencies are the server's, the waits are in <see cref="RateLimits"/>.
    /// </summary>
    private sealed record Sample(int Index, int Status, string? Error, double StartMs, double TtftMs, double EndMs, List<double> ArrivalsMs, List<int> Ids, string Text,
        TimeSpan? RetryAfter = null);

    /// <summary>The 429 answers of the whole run and the time clients waited them out.</summary>
    private sealed class RateLimits
    {
        public int Count;
        public long WaitedMs;
    }

    /// <summary>First wait after a 429, doubled each time up to <see cref="MaxBackoff"/>; attempts before a request counts as failed.</summary>
    private static readonly TimeSpan FirstBackoff = TimeSpan.FromMilliseconds(100), MaxBackoff = TimeSpan.FromSeconds(10);

    private const int MaxAttempts = 10;

    /// <summary>
    /// The wait before attempt <paramref name="attempt"/> + 1: the server's Retry-After, plus a random share of an
    /// exponential backoff ("full jitter"), so that clients refused together do not all come back together.
    /// </summary>
    internal static TimeSpan RetryDelay(int attempt, TimeSpan? retryAfter, Random random)
    {
        double cap = Math.Min(MaxBackoff.TotalMilliseconds, FirstBackoff.TotalMilliseconds * Math.Pow(2, Math.Min(attempt, 30)));
        return (retryAfter ?? TimeSpan.Zero) + TimeSpan.FromMilliseconds(random.NextDouble() * cap);
    }

    /// <summary>
    /// <see cref="Send"/>, and after a 429 again, after <see cref="RetryDelay"/>, until served or <see cref="MaxAttempts"/>
    /// attempts (then the 429 is the outcome). Null when the next attempt would come after <paramref name="until"/>, the
    /// end of the load: the client waits until then and sends nothing more, and the request is not counted.
    /// </summary>
    private static async Task<Sample?> SendPatiently(HttpClient http, Settings s, int index, Stopwatch clock, RateLimits limits, TimeSpan? until = null)
    {
        for (int attempt = 0; ; attempt++)
        {
            var sample = await Send(http, s, index, clock).ConfigureAwait(false);
            if (sample.Status != 429) return sample;
            Interlocked.Increment(ref limits.Count);
            if (attempt + 1 >= MaxAttempts) return sample;
            var wait = RetryDelay(attempt, sample.RetryAfter, Random.Shared);
            bool last = clock.Elapsed + wait > until;
            if (last) wait = until!.Value - clock.Elapsed;
            if (wait > TimeSpan.Zero)
            {
                Interlocked.Add(ref limits.WaitedMs, (long)wait.TotalMilliseconds);
                await Task.Delay(wait).ConfigureAwait(false);
            }
            if (last) return null;
        }
    }

    /// <summary><see cref="SendPatiently"/> where there is no deadline: a sample always comes back.</summary>
    private static async Task<Sample> SendAlone(HttpClient http, Settings s, int index, Stopwatch clock, RateLimits limits) =>
        (await SendPatiently(http, s, index, clock, limits).ConfigureAwait(false))!;

    /// <summary>
    /// GET /v1/models before the load: no server, a server that wants a key, or one that serves another model is an error
    /// that says so, not a run of failed requests.
    /// </summary>
    /// <returns>The vocabulary size the server reports for the model (our server's extension of the model object), or null.</returns>
    private static async Task<long?> CheckServer(HttpClient http, Uri uri, string model)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        string body;
        System.Net.HttpStatusCode status;
        try
        {
            using var r = await http.GetAsync("/v1/models", timeout.Token).ConfigureAwait(false);
            status = r.StatusCode;
            body = await r.Content.ReadAsStringAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (HttpRequestException e)
        {
            throw new XLstmOnnxException($"option --url: no server answers at {uri}: {e.Message}");
        }
        catch (OperationCanceledException)
        {
            throw new XLstmOnnxException($"option --url: the server at {uri} did not answer GET /v1/models within 30 s.");
        }
        string Shown() => body.Length > 300 ? body[..300] : body;
        if (status == System.Net.HttpStatusCode.Unauthorized)
        {
            throw new XLstmOnnxException($"the server at {uri} wants an API key (401): give --api-key or set {ServeCommand.ApiKeyVariable}; it answered {Shown()}");
        }
        if ((int)status is < 200 or > 299) throw new XLstmOnnxException($"option --url: the server at {uri} answered GET /v1/models with HTTP {(int)status}: {Shown()}");
        string[] ids;
        long? vocab = null;
        try
        {
            using var doc = JsonDocument.Parse(body);
            var models = doc.RootElement.GetProperty("data").EnumerateArray().ToArray();
            ids = [.. models.Select(m => m.GetProperty("id").GetString() ?? "")];
            foreach (var m in models)
            {
                if (m.GetProperty("id").GetString() == model && m.TryGetProperty("vocab_size", out var v) && v.TryGetInt64(out long n) && n > 0) vocab = n;
            }
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            throw new XLstmOnnxException($"option --url: the server at {uri} is not an OpenAI-compatible server: GET /v1/models answered {Shown()}");
        }
        if (!ids.Contains(model)) throw new XLstmOnnxException($"option --model-name: the server at {uri} serves {string.Join(", ", ids.Select(i => $"'{i}'"))}; found '{model}'.");
        return vocab;
    }

    private const int UnloadedIndex = 1 << 28, LongIndex = 1 << 29;

    /// <summary>Prompt ids come from [0, this) when neither --prompt-vocab nor the server says otherwise (xLSTM-7b has 50,304).</summary>
    private const int DefaultPromptVocab = 50_000;

    private static async Task<int> Run(string url, string? apiKey, Settings s, Plan plan, string? output, string command)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
        {
            throw new XLstmOnnxException($"option --url must be an http URL of a server on loopback, e.g. http://127.0.0.1:8000; found \"{url}\".");
        }
        if (!System.Net.IPAddress.TryParse(uri.Host.Trim('[', ']'), out var ip) ? uri.Host != "localhost" : !System.Net.IPAddress.IsLoopback(ip))
        {
            throw new XLstmOnnxException($"option --url must be a loopback address (127.0.0.1, ::1 or localhost); found {uri.Host}.");
        }
        int clients = plan.Clients, seconds = plan.Seconds;
        double warmup = plan.Warmup;
        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = clients + 4 }) { BaseAddress = uri, Timeout = TimeSpan.FromSeconds(seconds + 600) };
        if (apiKey is not null) http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", apiKey);
        long? vocab = await CheckServer(http, uri, s.Model).ConfigureAwait(false);
        if (s.PromptTokens is not null)
        {
            // random ids the model does not have would be refused (400) one request after another
            if (s.PromptVocab is { } given && vocab is { } served && given > served)
            {
                throw new XLstmOnnxException($"option --prompt-vocab: the model '{s.Model}' has a vocabulary of {served} ids; found {given}.");
            }
            s = s with { PromptVocab = s.PromptVocab ?? (int)Math.Min(vocab ?? DefaultPromptVocab, int.MaxValue) };
        }
        var limits = new RateLimits();
        var clock = Stopwatch.StartNew();
        var unloaded = new List<Sample>();
        for (int k = 0; k < plan.Unloaded; k++) unloaded.Add(await SendAlone(http, s, UnloadedIndex + k, clock, limits).ConfigureAwait(false));
        clock.Restart();
        var samples = new System.Collections.Concurrent.ConcurrentBag<Sample>();
        int issued = 0;
        var deadline = TimeSpan.FromSeconds(seconds);
        var load = Enumerable.Range(0, clients).Select(async c =>
        {
            while (clock.Elapsed < deadline)
            {
                int index = Interlocked.Increment(ref issued) - 1;
                if (index >= plan.MaxRequests) break;
                if (await SendPatiently(http, s, index, clock, limits, deadline).ConfigureAwait(false) is { } sample) samples.Add(sample);
            }
        }).ToList();
        Task<Sample?>? longRequest = plan.LongPrompt > 0 ? Task.Run(async () =>
        {
            await Task.Delay(TimeSpan.FromSeconds(Math.Min(warmup, seconds / 2.0))).ConfigureAwait(false);
            return await SendPatiently(http, s with { PromptTokens = (plan.LongPrompt, plan.LongPrompt), MaxTokens = 1 }, LongIndex, clock, limits, deadline).ConfigureAwait(false);
        }) : null;
        await Task.WhenAll(load).ConfigureAwait(false);
        var longSample = longRequest is null ? null : await longRequest.ConfigureAwait(false);
        double elapsed = clock.Elapsed.TotalSeconds;
        var all = samples.OrderBy(x => x.Index).ToList();
        if (longSample is not null) all.Add(longSample);
        var ok = all.Where(x => x.Status == 200 && x.Error is null).ToList();
        var failed = all.Except(ok).ToList();
        ok.Remove(longSample!);

        // the reference: requests served alone, one at a time, after the load
        int mismatches = 0, compared = 0;
        var firstMismatch = (string?)null;
        foreach (var sample in ok.Take(plan.Check))
        {
            var alone = await SendAlone(http, s, sample.Index, clock, limits).ConfigureAwait(false);
            if (alone.Status != 200 || alone.Error is not null) { firstMismatch ??= $"request {sample.Index} alone failed: {alone.Status} {alone.Error}"; mismatches++; continue; }
            compared++;
            bool same = sample.Ids.Count > 0 || alone.Ids.Count > 0 ? sample.Ids.SequenceEqual(alone.Ids) : sample.Text == alone.Text;
            if (same) continue;
            mismatches++;
            int at = Enumerable.Range(0, Math.Min(sample.Ids.Count, alone.Ids.Count)).FirstOrDefault(i => sample.Ids[i] != alone.Ids[i], Math.Min(sample.Ids.Count, alone.Ids.Count));
            firstMismatch ??= $"request {sample.Index}: under load and alone differ from token {at} on";
        }

        object? longReport = null;
        if (longSample is { Status: 200, Error: null })
        {
            // the others' gaps between tokens while the long prompt was read, against those of the second before it
            double from = longSample.StartMs, to = longSample.StartMs + longSample.TtftMs;
            var gaps = ok.SelectMany(x => x.ArrivalsMs.Zip(x.ArrivalsMs.Skip(1), (a, b) => (a, b))).ToList();
            var during = gaps.Where(g => g.b > from && g.a < to).Select(g => g.b - g.a).ToArray();
            var before = gaps.Where(g => g.a >= from - 1000 && g.b <= from).Select(g => g.b - g.a).ToArray();
            longReport = new Dictionary<string, object?>
            {
                ["prompt_tokens"] = plan.LongPrompt,
                ["ttft_ms"] = longSample.TtftMs,
                ["itl_ms_during"] = Percentiles(during),
                ["itl_ms_mean_during"] = during.Length > 0 ? during.Average() : null,
                ["itl_ms_before"] = Percentiles(before),
                ["itl_ms_mean_before"] = before.Length > 0 ? before.Average() : null,
            };
        }
        double windowStart = Math.Min(warmup, seconds), windowEnd = seconds;
        long windowTokens = ok.Sum(x => (long)x.ArrivalsMs.Count(t => t >= windowStart * 1000 && t < windowEnd * 1000));
        long tokens = ok.Sum(x => (long)x.ArrivalsMs.Count);
        var ttft = ok.Select(x => x.TtftMs).ToArray();
        var itl = ok.SelectMany(x => x.ArrivalsMs.Zip(x.ArrivalsMs.Skip(1), (a, b) => b - a)).ToArray();
        var e2e = ok.Select(x => x.EndMs - x.StartMs).ToArray();
        var result = new Dictionary<string, object?>
        {
            ["command"] = "xlstm-onnx " + command,
            ["clients"] = clients,
            ["seconds_requested"] = seconds,
            ["elapsed_s"] = elapsed,
            ["requests"] = all.Count,
            ["ok"] = ok.Count,
            ["failed"] = failed.Count,
            ["status_codes"] = all.GroupBy(x => x.Status).ToDictionary(g => g.Key.ToString(CultureInfo.InvariantCulture), g => g.Count()),
            // every 429 answer, retried ones included, and the time clients waited (Retry-After and backoff)
            ["rate_limited_429"] = limits.Count,
            ["rate_limit_wait_s"] = limits.WaitedMs / 1000.0,
            ["errors"] = failed.Select(x => $"request {x.Index}: {(x.Status == 0 ? "" : $"HTTP {x.Status}: ")}{x.Error}").Distinct().Take(5).ToArray(),
            ["checked_alone"] = compared,
            ["mismatches_vs_alone"] = mismatches,
            ["first_mismatch"] = firstMismatch,
            ["completion_tokens"] = tokens,
            ["throughput_tokens_per_s"] = elapsed > 0 ? tokens / elapsed : null,
            ["window_s"] = new[] { windowStart, windowEnd },
            ["window_throughput_tokens_per_s"] = windowEnd > windowStart ? windowTokens / (windowEnd - windowStart) : null,
            ["ttft_ms"] = Percentiles(ttft),
            ["itl_ms"] = Percentiles(itl),
            ["e2e_ms"] = Percentiles(e2e),
            ["unloaded_ttft_ms"] = unloaded.Count > 0 ? Percentiles([.. unloaded.Where(x => x.Status == 200).Select(x => x.TtftMs)]) : null,
            ["unloaded_itl_ms"] = unloaded.Count > 0 ? Percentiles([.. unloaded.SelectMany(x => x.ArrivalsMs.Zip(x.ArrivalsMs.Skip(1), (a, b) => b - a))]) : null,
            ["long_prompt"] = longReport,
        };
        string json = JsonSerializer.Serialize(result, new JsonSerializerOptions { WriteIndented = true });
        Console.WriteLine(json);
        if (output is not null) AtomicFile.WriteAllText(output, json + "\n");
        return mismatches == 0 && failed.Count == 0 && ok.Count > 0 ? 0 : 1;
    }

    /// <summary>p50/p90/p99/max, or nulls when there is nothing to summarise (JSON has no NaN).</summary>
    private static Dictionary<string, double?> Percentiles(double[] values)
    {
        var v = values.Order().ToArray();
        double? At(double q) => v.Length == 0 ? null : v[Math.Clamp((int)Math.Ceiling(q * v.Length) - 1, 0, v.Length - 1)];
        return new() { ["p50"] = At(0.50), ["p90"] = At(0.90), ["p99"] = At(0.99), ["max"] = v.Length == 0 ? null : v[^1], ["count"] = v.Length };
    }

    private static object Prompt(Settings s, int index)
    {
        if (s.PromptTokens is not { } range) return Verses[index % Verses.Length];
        // a prompt of its own for every request, the same for the same index (the check sends it again)
        ulong state = s.Seed * 0x9E3779B97F4A7C15UL + (ulong)index;
        int Next(int n)
        {
            state += 0x9E3779B97F4A7C15UL;
            ulong z = state;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return (int)((z ^ (z >> 31)) % (ulong)n);
        }
        int length = range.Min + Next(range.Max - range.Min + 1);
        return Enumerable.Range(0, length).Select(_ => Next(s.PromptVocab ?? DefaultPromptVocab)).ToArray();
    }

    private static async Task<Sample> Send(HttpClient http, Settings s, int index, Stopwatch clock)
    {
        double start = clock.Elapsed.TotalMilliseconds;
        var arrivals = new List<double>();
        var ids = new List<int>();
        var text = new StringBuilder();
        double ttft = double.NaN;
        try
        {
            var body = new Dictionary<string, object>
            {
                ["model"] = s.Model, ["prompt"] = Prompt(s, index), ["max_tokens"] = s.MaxTokens, ["temperature"] = s.Temperature,
                ["seed"] = index, ["stream"] = true, ["return_token_ids"] = true,
            };
            if (s.IgnoreEos) body["ignore_eos"] = true;
            using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(body) };
            using var resp = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
            if (!resp.IsSuccessStatusCode)
            {
                string error = await resp.Content.ReadAsStringAsync().ConfigureAwait(false);
                var retryAfter = resp.Headers.RetryAfter is { } ra ? ra.Delta ?? (ra.Date is { } at ? at - DateTimeOffset.UtcNow : null) : null;
                return new Sample(index, (int)resp.StatusCode, error.Length > 300 ? error[..300] : error, start, ttft, clock.Elapsed.TotalMilliseconds, arrivals, ids, "",
                    retryAfter is { } wait && wait > TimeSpan.Zero ? (wait < MaxBackoff * 6 ? wait : MaxBackoff * 6) : null);
            }
            using var reader = new StreamReader(await resp.Content.ReadAsStreamAsync().ConfigureAwait(false));
            bool done = false;
            while (await reader.ReadLineAsync().ConfigureAwait(false) is { } line)
            {
                if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
                if (line == "data: [DONE]") { done = true; break; }
                double now = clock.Elapsed.TotalMilliseconds;
                using var doc = JsonDocument.Parse(line.AsMemory(6));
                if (doc.RootElement.TryGetProperty("error", out var err)) return new Sample(index, 200, err.GetRawText(), start, ttft, now, arrivals, ids, text.ToString());
                var choice = doc.RootElement.GetProperty("choices")[0];
                text.Append(choice.GetProperty("text").GetString());
                int n = 1;
                if (choice.TryGetProperty("token_ids", out var t) && t.ValueKind == JsonValueKind.Array)
                {
                    n = t.GetArrayLength();
                    foreach (var id in t.EnumerateArray()) ids.Add(id.GetInt32());
                }
                if (double.IsNaN(ttft)) ttft = now - start;
                for (int k = 0; k < n; k++) arrivals.Add(now);
            }
            return new Sample(index, 200, done ? null : "the stream ended without [DONE]", start, ttft, clock.Elapsed.TotalMilliseconds, arrivals, ids, text.ToString());
        }
        catch (Exception e)
        {
            // whatever went wrong with one request is that request's failure: the run goes on and reports it
            return new Sample(index, 0, $"{e.GetType().Name}: {e.Message}", start, ttft, clock.Elapsed.TotalMilliseconds, arrivals, ids, text.ToString());
        }
    }
}
