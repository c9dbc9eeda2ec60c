using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging.Abstractions;
using XLstmOnnx.Cli.Serving;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// Fuzzes the HTTP API's request bodies: a seeded mutator over valid bodies of each endpoint (byte flips, cuts, copies,
/// JSON fragments spliced in, and values of every type and range put into known and unknown fields), for a bounded time.
/// Every answer must be 2xx, or 4xx with an OpenAI-shaped error; never a 5xx, a hang or a crash; and the server serves
/// a normal request afterwards. A failure names the iteration and the body, and the same seed replays it.
/// <c>XLSTM_FUZZ_SECONDS</c> runs it longer, <c>XLSTM_FUZZ_SEED</c> with other mutations.
/// </summary>
[TestFixture]
[NonParallelizable]
public class RequestBodyFuzzTests
{
    private static readonly int Seed = int.TryParse(Environment.GetEnvironmentVariable("XLSTM_FUZZ_SEED"), out int seed) ? seed : 15;
    private static readonly TimeSpan Budget = TimeSpan.FromSeconds(
        double.TryParse(Environment.GetEnvironmentVariable("XLSTM_FUZZ_SECONDS"), System.Globalization.CultureInfo.InvariantCulture, out double s) ? s : 15);

    private ShippedModelServer _server = null!;

    // small limits: a mutated request costs milliseconds, however large the numbers it asks for
    [OneTimeSetUp]
    public async Task Start() => _server = await ShippedModelServer.StartAsync(new ServingOptions { MaxBatch = 4, QueueCapacity = 32 },
        new ServerOptions { ModelId = "kjv", MaxTokensLimit = 8, MaxPromptTokens = 64, MaxN = 2, Logs = NullLoggerProvider.Instance });

    [OneTimeTearDown]
    public async Task Stop() => await _server.DisposeAsync();

    private static readonly (string Path, string Body)[] Corpus =
    [
        ("/v1/completions", """{"model": "kjv", "prompt": "And God said", "max_tokens": 4, "temperature": 0}"""),
        ("/v1/completions", """{"model": "kjv", "prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0.8, "top_p": 0.9, "top_k": 5, "seed": 7, "n": 2, "logprobs": 2}"""),
        ("/v1/completions", """{"model": "kjv", "prompt": ["And", "The LORD"], "max_tokens": 2, "stream": true, "stream_options": {"include_usage": true}, "echo": true}"""),
        ("/v1/completions", """{"model": "kjv", "prompt": "In the beginning", "max_tokens": 5, "stop": ["\n", "."], "stop_token_ids": [0], "logit_bias": {"5": -100}, "presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1, "min_p": 0.1, "ignore_eos": true, "return_token_ids": true, "user": "u"}"""),
        ("/v1/chat/completions", """{"model": "kjv", "messages": [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Who was Moses?"}], "max_tokens": 4}"""),
        ("/v1/chat/completions", """{"model": "kjv", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_completion_tokens": 3, "stream": true, "logprobs": true, "top_logprobs": 2, "response_format": {"type": "text"}, "tools": [], "tool_choice": "none"}"""),
        ("/tokenize", """{"model": "kjv", "prompt": "And God said", "add_special_tokens": false, "return_token_strs": true}"""),
        ("/tokenize", """{"model": "kjv", "messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": true}"""),
        ("/detokenize", """{"model": "kjv", "tokens": [1, 2, 3]}"""),
    ];

    private static readonly string[] Paths = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"];

    /// <summary>Field names of the API (known ones reach the parser's checks; the rest its refusal of unknown fields).</summary>
    private static readonly string[] Fields =
    [
        "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream",
        "stream_options", "stop", "stop_token_ids", "seed", "logit_bias", "logprobs", "top_logprobs", "echo", "best_of", "suffix",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "ignore_eos", "return_token_ids", "user", "tools", "tool_choice",
        "response_format", "service_tier", "modalities", "metadata", "store", "tokens", "add_special_tokens", "add_generation_prompt",
        "return_token_strs", "role", "content", "type", "text", "include_usage", "name", "zzz",
    ];

    /// <summary>JSON values of every kind, at and beyond the edges of the ranges the API checks.</summary>
    private static readonly string[] Values =
    [
        "null", "true", "false", "0", "-0", "1", "-1", "2", "3", "8", "9", "64", "65", "100", "101", "2147483647", "2147483648", "-2147483649",
        "9223372036854775808", "1e308", "1e999", "-1e999", "0.5", "1.5", "2.0000001", "1e-320", "\"\"", "\"x\"", "\"yes\"", "\"kjv\"",
        "\"\\ud800\"", "\"\\udc00\\ud800\"", "\"\\u0000\"", "\"And the LORD\"", "\"\\n\"", "\"user\"", "\"text\"", "\"none\"", "\"auto\"",
        "[]", "[1, 2, 3]", "[-1]", "[99999]", "[0.5]", "[\"a\"]", "[[1, 2], [3]]", "[[]]", "[\"\", \"\"]", "[null]", "{}",
        "{\"type\": \"text\"}", "{\"type\": \"text\", \"text\": \"hi\"}", "{\"5\": 100}", "{\"-1\": 1}", "{\"5\": \"x\"}",
        "{\"include_usage\": true}", "{\"role\": \"user\", \"content\": \"hi\"}", "[{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]",
        new string('[', 70) + new string(']', 70), "\"" + new string('a', 5000) + "\"", "[" + string.Join(",", Enumerable.Repeat("5", 100)) + "]",
    ];

    private static readonly string[] Fragments = ["\"", "\\", "\\u", "\\ud800", "{", "}", "[", "]", ",", ":", "null", "1e999", "\"yes\"", "\u00e9", "\uffff", "\0"];

    [Test]
    public async Task MutatedBodiesGetOnly2xxOr4xxAndTheServerKeepsServing()
    {
        var random = new Random(Seed);
        using var http = new HttpClient { BaseAddress = _server.Http.BaseAddress, Timeout = TimeSpan.FromSeconds(20) };
        var clock = Stopwatch.StartNew();
        var statuses = new Dictionary<int, int>();
        int iteration = 0;
        for (; clock.Elapsed < Budget; iteration++)
        {
            var (path, seed) = Corpus[random.Next(Corpus.Length)];
            if (random.Next(8) == 0) path = Paths[random.Next(Paths.Length)]; // a body of one endpoint sent to another
            byte[] body = Encoding.UTF8.GetBytes(seed);
            for (int k = random.Next(1, 5); k > 0; k--) body = Mutate(body, random);
            string shown = Encoding.UTF8.GetString(body);
            string where = $"seed {Seed}, iteration {iteration}: POST {path} {(shown.Length > 600 ? shown[..600] + "..." : shown)}";
            HttpResponseMessage r;
            string text;
            try
            {
                using var content = new ByteArrayContent(body);
                content.Headers.ContentType = new("application/json");
                r = await http.PostAsync(path, content);
                text = await r.Content.ReadAsStringAsync();
            }
            catch (TaskCanceledException)
            {
                Assert.Fail($"no answer within 20 s (a hang): {where}");
                return;
            }
            int status = (int)r.StatusCode;
            statuses[status] = statuses.GetValueOrDefault(status) + 1;
            Assert.That(status, Is.InRange(200, 299).Or.InRange(400, 499), $"{text}\n{where}");
            if (status >= 400)
            {
                var error = JsonDocument.Parse(text).RootElement.GetProperty("error");
                Assert.That(error.GetProperty("message").GetString(), Is.Not.Empty, where);
            }
            r.Dispose();
        }
        TestContext.Out.WriteLine($"{iteration} mutated bodies in {clock.Elapsed.TotalSeconds:F1} s; statuses {string.Join(", ", statuses.OrderBy(p => p.Key).Select(p => $"{p.Key}: {p.Value}"))}");
        Assert.That(iteration, Is.GreaterThan(100), "the budget ran enough bodies to mean something");
        Assert.That(statuses.Keys, Does.Contain(200).And.Contain(400), "mutations reach both the parser's refusals and the engine");

        using var normal = await http.PostAsync("/v1/completions", new StringContent(Corpus[0].Body, Encoding.UTF8, "application/json"));
        Assert.That(normal.StatusCode, Is.EqualTo(HttpStatusCode.OK), "the server still serves a normal request");
        Assert.That(_server.Engine.Metrics.QueueDepth, Is.Zero);
    }

    /// <summary>One mutation: half the time of the JSON structure (when the body is JSON), else of the bytes.</summary>
    private static byte[] Mutate(byte[] body, Random random)
    {
        if (random.Next(2) == 0 && MutateStructure(body, random) is { } mutated) return mutated;
        int at = random.Next(body.Length + 1);
        switch (random.Next(6))
        {
            case 0: // flip a bit
                if (body.Length == 0) return body;
                byte[] flipped = [.. body];
                flipped[Math.Min(at, body.Length - 1)] ^= (byte)(1 << random.Next(8));
                return flipped;
            case 1: // cut a range
                int cut = random.Next(Math.Min(16, body.Length - at) + 1);
                return [.. body[..at], .. body[(at + cut)..]];
            case 2: // copy a range in
                int from = random.Next(body.Length + 1), length = random.Next(Math.Min(32, body.Length - from) + 1);
                return [.. body[..at], .. body[from..(from + length)], .. body[at..]];
            case 3: // a JSON fragment
                return [.. body[..at], .. Encoding.UTF8.GetBytes(Fragments[random.Next(Fragments.Length)]), .. body[at..]];
            case 4: // a byte that is not UTF-8
                return [.. body[..at], (byte)random.Next(0x80, 0x100), .. body[at..]];
            default: // truncate
                return body[..at];
        }
    }

    private const string Placeholder = "@@fuzz@@";

    /// <summary>
    /// The body with one value replaced, removed or added, or null when it is not JSON that JsonNode reads and writes
    /// back (duplicate keys, a lone surrogate, 70 levels deep). The new value goes in as a placeholder, replaced in the
    /// text: JsonNode itself would refuse the values that matter most.
    /// </summary>
    private static byte[]? MutateStructure(byte[] body, Random random)
    {
        try
        {
            var node = JsonNode.Parse(body);
            if (node is null) return null;
            MutateNode(node, random);
            return Encoding.UTF8.GetBytes(node.ToJsonString().Replace($"\"{Placeholder}\"", Values[random.Next(Values.Length)], StringComparison.Ordinal));
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or ArgumentException)
        {
            return null;
        }
    }

    /// <summary>Replaces, removes or adds one value somewhere in <paramref name="root"/>.</summary>
    private static void MutateNode(JsonNode root, Random random)
    {
        // a random container on a random walk down from the root
        JsonNode container = root;
        while (random.Next(3) != 0)
        {
            var children = container switch
            {
                JsonObject o => o.Select(p => p.Value).Where(v => v is JsonObject or JsonArray).ToList(),
                JsonArray a => a.Where(v => v is JsonObject or JsonArray).ToList(),
                _ => [],
            };
            if (children.Count == 0) break;
            container = children[random.Next(children.Count)]!;
        }
        JsonNode value = JsonValue.Create(Placeholder);
        switch (container)
        {
            case JsonObject o when o.Count > 0 && random.Next(4) == 0:
                o.Remove(o.ElementAt(random.Next(o.Count)).Key);
                break;
            case JsonObject o when o.Count > 0 && random.Next(2) == 0:
                o[o.ElementAt(random.Next(o.Count)).Key] = value;
                break;
            case JsonObject o:
                o[Fields[random.Next(Fields.Length)]] = value;
                break;
            case JsonArray a when a.Count > 0 && random.Next(3) == 0:
                a.RemoveAt(random.Next(a.Count));
                break;
            case JsonArray a when a.Count > 0 && random.Next(2) == 0:
                a[random.Next(a.Count)] = value;
                break;
            case JsonArray a:
                a.Add(value);
                break;
        }
    }
}
