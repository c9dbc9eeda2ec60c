using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace XLstmOnnx.Cli;

/// <summary>
/// <c>xlstm-onnx loadtest --url URL [--clients 64] [--seconds 60] [--max-tokens 64] [--out FILE]</c>: concurrent streaming
/// greedy clients against a running server on loopback, bounded in time and count. Every streamed text is compared with
/// the same request served alone (nothing lost or duplicated); prints p50/p99 time to first token and per-token latency,
/// and total throughput, as a table and JSON.
/// </summary>
internal static class LoadTestCommand
{
    private static readonly string[] Prompts =
    [
        "In the beginning", "And God said", "And Moses said unto the LORD", "The LORD is my shepherd", "And Jesus answered",
        "Blessed are the poor in spirit", "And it came to pass", "Now the serpent was more subtil", "Let not your heart be troubled",
        "For God so loved the world", "And David said", "Then said Jesus unto them", "Hear, O Israel", "And the angel said unto her",
        "Wisdom is the principal thing", "Vanity of vanities",
    ];

    public static Command Create()
    {
        var url = new Option<string>("--url") { Description = "Server base URL (loopback), e.g. http://127.0.0.1:8000.", Required = true };
        var model = new Option<string>("--model-name") { Description = "Model id the server serves.", Required = true };
        var clients = new Option<int>("--clients") { Description = "Concurrent streaming clients.", DefaultValueFactory = _ => 64 };
        var seconds = new Option<int>("--seconds") { Description = "How long clients keep sending (each finishes its request).", DefaultValueFactory = _ => 60 };
        var maxRequests = new Option<int>("--max-requests") { Description = "Upper bound on requests in all.", DefaultValueFactory = _ => 100_000 };
        var maxTokens = new Option<int>("--max-tokens") { Description = "max_tokens of each request.", DefaultValueFactory = _ => 64 };
        var output = new Option<string?>("--out") { Description = "Write the results as JSON here." };
        var cmd = new Command("loadtest", "Load-test a running server with concurrent streaming greedy clients (loopback only).") { url, model, clients, seconds, maxRequests, maxTokens, output };
        cmd.SetAction(r => CliErrors.Run(() => Run(r.GetValue(url)!, r.GetValue(model)!, r.GetValue(clients), r.GetValue(seconds), r.GetValue(maxRequests), r.GetValue(maxTokens), r.GetValue(output)).GetAwaiter().GetResult()));
        return cmd;
    }

    private sealed record Sample(int Prompt, string Text, double TtftMs, List<double> GapsMs, int Tokens, int Status);

    private static async Task<int> Run(string url, string model, int clients, int seconds, int maxRequests, int maxTokens, string? output)
    {
        var uri = new Uri(url);
        if (!System.Net.IPAddress.TryParse(uri.Host, out var ip) ? uri.Host != "localhost" : !System.Net.IPAddress.IsLoopback(ip))
        {
            throw new XLstmOnnxException($"option --url must be a loopback address (127.0.0.1, ::1 or localhost); found {uri.Host}.");
        }
        using var http = new HttpClient { BaseAddress = uri, Timeout = TimeSpan.FromSeconds(seconds + 120) };
        var samples = new System.Collections.Concurrent.ConcurrentBag<Sample>();
        int issued = 0;
        var clock = Stopwatch.StartNew();
        var deadline = TimeSpan.FromSeconds(seconds);
        await Task.WhenAll(Enumerable.Range(0, clients).Select(async c =>
        {
            for (int k = 0; clock.Elapsed < deadline && Interlocked.Increment(ref issued) <= maxRequests; k++)
            {
                int p = (c * 7 + k) % Prompts.Length;
                samples.Add(await Stream(http, model, p, maxTokens).ConfigureAwait(false));
            }
        })).ConfigureAwait(false);
        double elapsed = clock.Elapsed.TotalSeconds;
        // the reference: each prompt served alone, after the load
        var alone = new string[Prompts.Length];
        for (int p = 0; p < Prompts.Length; p++) alone[p] = (await Stream(http, model, p, maxTokens).ConfigureAwait(false)).Text;
        var ok = samples.Where(s => s.Status == 200).ToList();
        int mismatches = ok.Count(s => s.Text != alone[s.Prompt]);
        var ttft = ok.Select(s => s.TtftMs).Order().ToArray();
        var gaps = ok.SelectMany(s => s.GapsMs).Order().ToArray();
        long tokens = ok.Sum(s => (long)s.Tokens);
        var result = new
        {
            command = $"xlstm-onnx loadtest --url {url} --model-name {model} --clients {clients} --seconds {seconds} --max-tokens {maxTokens}",
            clients, seconds_requested = seconds, elapsed_s = elapsed, requests = samples.Count, ok = ok.Count,
            errors = samples.Count - ok.Count, status_codes = samples.GroupBy(s => s.Status).ToDictionary(g => g.Key.ToString(CultureInfo.InvariantCulture), g => g.Count()),
            mismatches_vs_single_request = mismatches, completion_tokens = tokens, throughput_tokens_per_s = tokens / elapsed,
            ttft_ms = new { p50 = Pct(ttft, 0.50), p99 = Pct(ttft, 0.99), max = ttft.LastOrDefault() },
            per_token_ms = new { p50 = Pct(gaps, 0.50), p99 = Pct(gaps, 0.99), max = gaps.LastOrDefault() },
        };
        string json = JsonSerializer.Serialize(result, new JsonSerializerOptions { WriteIndented = true });
        Console.WriteLine(json);
        if (output is not null) File.WriteAllText(output, json + "\n");
        return mismatches == 0 && ok.Count == samples.Count ? 0 : 1;
    }

    private static double Pct(double[] sorted, double q) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];

    private static async Task<Sample> Stream(HttpClient http, string model, int p, int maxTokens)
    {
        var start = Stopwatch.GetTimestamp();
        using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = JsonContent.Create(new { model, prompt = Prompts[p], max_tokens = maxTokens, temperature = 0, stream = true }),
        };
        using var resp = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
        if (!resp.IsSuccessStatusCode) return new Sample(p, "", 0, [], 0, (int)resp.StatusCode);
        using var reader = new StreamReader(await resp.Content.ReadAsStreamAsync().ConfigureAwait(false));
        var text = new StringBuilder();
        var gaps = new List<double>();
        double ttft = -1, last = 0;
        int tokens = 0;
        while (await reader.ReadLineAsync().ConfigureAwait(false) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            if (line == "data: [DONE]") break;
            double now = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            if (ttft < 0) ttft = now;
            else gaps.Add(now - last);
            last = now;
            tokens++;
            text.Append(JsonDocument.Parse(line[6..]).RootElement.GetProperty("choices")[0].GetProperty("text").GetString());
        }
        return new Sample(p, text.ToString(), ttft, gaps, tokens, 200);
    }
}
