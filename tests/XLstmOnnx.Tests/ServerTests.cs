using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Logging.Abstractions;
using XLstmOnnx.Cli.Serving;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>The OpenAI-compatible server on a free loopback port, with the shipped model.</summary>
[TestFixture]
[NonParallelizable]
public class ServerTests
{
    private ShippedModelServer _server = null!;
    private string _model => _server.Model;
    private XLstmSession _session => _server.Session;
    private ServingEngine _engine => _server.Engine;
    private HttpClient _http => _server.Http;
    private const string Prompt = "And Moses said unto the LORD";

    [OneTimeSetUp]
    public async Task Start() => _server = await ShippedModelServer.StartAsync(new ServingOptions { MaxBatch = 8, QueueCapacity = 64 },
        new ServerOptions { ModelId = "kjv", MaxPromptTokens = 512, MaxTokensLimit = 100_000, Logs = NullLoggerProvider.Instance });

    [OneTimeTearDown]
    public async Task Stop() => await _server.DisposeAsync();

    private async Task<JsonElement> Post(string path, object body, HttpStatusCode expected = HttpStatusCode.OK)
    {
        using var r = await _http.PostAsJsonAsync(path, body);
        string text = await r.Content.ReadAsStringAsync();
        Assert.That(r.StatusCode, Is.EqualTo(expected), text);
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    /// <summary>Streams a request; returns the concatenated text of choice 0 and its finish reason.</summary>
    private async Task<(string Text, string? Finish)> PostStream(string path, object body, bool chat)
    {
        using var req = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body) };
        using var r = await _http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(r.Content.Headers.ContentType?.MediaType, Is.EqualTo("text/event-stream"));
        var sb = new StringBuilder();
        string? finish = null;
        bool done = false;
        using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            string data = line[6..];
            if (data == "[DONE]") { done = true; break; }
            var c = JsonDocument.Parse(data).RootElement.GetProperty("choices")[0];
            sb.Append(chat ? c.GetProperty("delta").GetProperty("content").GetString() : c.GetProperty("text").GetString());
            if (c.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finish = c.GetProperty("finish_reason").GetString();
        }
        Assert.That(done, "the stream ends with data: [DONE]");
        return (sb.ToString(), finish);
    }

    private string CliGreedy(string prompt, int maxTokens, params string[] extra)
    {
        var (code, output) = GenerationTests.RunCli(["generate", "--model", _model, "--prompt", prompt, "--greedy", "--max-new-tokens", maxTokens.ToString(), .. extra]);
        Assert.That(code, Is.Zero, output);
        Assert.That(output, Does.EndWith("\n"));
        string text = output[..^1]; // the newline the CLI writes after the text
        Assert.That(text, Does.StartWith(prompt));
        return text[prompt.Length..];
    }

    [Test]
    public async Task CompletionsEqualTheCliGreedyOutput()
    {
        string expected = CliGreedy(Prompt, 30);
        var json = await Post("/v1/completions", new { model = "kjv", prompt = Prompt, max_tokens = 30, temperature = 0 });
        Assert.That(json.GetProperty("object").GetString(), Is.EqualTo("text_completion"));
        var choice = json.GetProperty("choices")[0];
        Assert.That(choice.GetProperty("text").GetString(), Is.EqualTo(expected));
        Assert.That(choice.GetProperty("finish_reason").GetString(), Is.EqualTo("length"));
        Assert.That(json.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(30));
        var (streamed, finish) = await PostStream("/v1/completions", new { model = "kjv", prompt = Prompt, max_tokens = 30, temperature = 0, stream = true }, chat: false);
        Assert.That(streamed, Is.EqualTo(expected), "streaming gives the same text");
        Assert.That(finish, Is.EqualTo("length"));
    }

    [Test]
    public async Task PromptAsTokenIdsEqualsPromptAsText()
    {
        var ids = _session.Tokenizer!.Encode(Prompt);
        var a = await Post("/v1/completions", new { model = "kjv", prompt = ids, max_tokens = 12, temperature = 0 });
        var b = await Post("/v1/completions", new { model = "kjv", prompt = Prompt, max_tokens = 12, temperature = 0 });
        Assert.That(a.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(b.GetProperty("choices")[0].GetProperty("text").GetString()));
    }

    [Test]
    public async Task ChatCompletionsEqualTheCliOnTheSameTranscript()
    {
        var messages = new[] { new { role = "system", content = "Answer in the words of the King James Bible." }, new { role = "user", content = "Who led Israel out of Egypt?" } };
        string transcript = ChatTemplate.Render(messages.Select(m => (m.role, m.content)));
        string expected = new ChatReply().Next(CliGreedy(transcript, 40, "--stop", ChatTemplate.StopString));
        Assert.That(expected, Does.Not.StartWith(" "), "the reply after 'Assistant:' loses its one leading space");
        var json = await Post("/v1/chat/completions", new { model = "kjv", messages, max_tokens = 40, temperature = 0 });
        var message = json.GetProperty("choices")[0].GetProperty("message");
        Assert.That(message.GetProperty("role").GetString(), Is.EqualTo("assistant"));
        Assert.That(message.GetProperty("content").GetString(), Is.EqualTo(expected));
        var (streamed, _) = await PostStream("/v1/chat/completions", new { model = "kjv", messages, max_tokens = 40, temperature = 0, stream = true }, chat: true);
        Assert.That(streamed, Is.EqualTo(expected));
    }

    [Test]
    public async Task ConcurrentIdenticalGreedyRequestsAllGetTheSingleRequestText()
    {
        var body = new { model = "kjv", prompt = "And the LORD said unto Abram", max_tokens = 24, temperature = 0 };
        string single = (await Post("/v1/completions", body)).GetProperty("choices")[0].GetProperty("text").GetString()!;
        var all = await Task.WhenAll(Enumerable.Range(0, 32).Select(async _ => (await Post("/v1/completions", body)).GetProperty("choices")[0].GetProperty("text").GetString()));
        Assert.That(all, Is.All.EqualTo(single), "32 concurrent requests, batched 8 at a time, each equal to the request alone");
    }

    [Test]
    public async Task SeededSamplingAndNChoices()
    {
        var body = new { model = "kjv", prompt = Prompt, max_tokens = 16, temperature = 0.9, top_p = 0.95, seed = 7, n = 3 };
        var a = await Post("/v1/completions", body);
        var b = await Post("/v1/completions", body);
        string[] A = [.. a.GetProperty("choices").EnumerateArray().Select(c => c.GetProperty("text").GetString()!)];
        string[] B = [.. b.GetProperty("choices").EnumerateArray().Select(c => c.GetProperty("text").GetString()!)];
        Assert.That(A, Has.Length.EqualTo(3));
        Assert.That(B, Is.EqualTo(A), "same seed, same choices");
        Assert.That(A.Distinct().Count(), Is.GreaterThan(1), "the choices use different seeds");
    }

    [Test]
    public async Task PrefixCacheHitGivesTheSameTextAsAColdStart()
    {
        string system = "System: The words of the book of Genesis, the first book of Moses.\n";
        string before = Metric("xlstm_prefix_cache_hits_total");
        await Post("/v1/completions", new { model = "kjv", prompt = system, max_tokens = 1, temperature = 0 });
        string warm = (await Post("/v1/completions", new { model = "kjv", prompt = system + "User: In the beginning", max_tokens = 20, temperature = 0 }))
            .GetProperty("choices")[0].GetProperty("text").GetString()!;
        Assert.That(double.Parse(Metric("xlstm_prefix_cache_hits_total")), Is.GreaterThan(double.Parse(before)), "the second prompt starts from the first one's state");
        Assert.That(warm, Is.EqualTo(CliGreedy(system + "User: In the beginning", 20)), "starting from the cached state changes nothing");
    }

    [TestCase("""{"model": "kjv", "prompt": """, 400, "not valid JSON", TestName = "invalid JSON")]
    [TestCase("""{"model": "gpt-4", "prompt": "x"}""", 404, "model_not_found", TestName = "unknown model")]
    [TestCase("""{"model": "kjv", "prompt": "x", "max_tokens": -1}""", 400, "max_tokens", TestName = "negative max_tokens")]
    [TestCase("""{"model": "kjv", "prompt": "x", "max_tokens": 100000000000}""", 400, "max_tokens", TestName = "huge max_tokens")]
    [TestCase("""{"model": "kjv", "prompt": [1, 2, 99999]}""", 400, "99999", TestName = "invalid token id")]
    [TestCase("""{"model": "kjv", "prompt": {"a": 1}}""", 400, "prompt", TestName = "prompt of the wrong type")]
    [TestCase("""{"model": "kjv", "messages": [{"role": "wizard", "content": "hi"}]}""", 400, "role", TestName = "unknown chat role", Category = "chat")]
    [TestCase("""{"model": "kjv", "prompt": "x", "temperature": 7}""", 400, "temperature", TestName = "temperature out of range")]
    [TestCase("""{"model": "kjv", "prompt": "x", "stream": "yes"}""", 400, "'stream' must be a boolean; found \"yes\".", TestName = "stream not a boolean")]
    [TestCase("""{"model": "kjv", "prompt": "x", "stream": 1}""", 400, "'stream' must be a boolean; found 1.", TestName = "stream a number")]
    [TestCase("""{"model": "kjv", "prompt": "And \ud800"}""", 400, "the string at prompt has a lone UTF-16 surrogate", TestName = "lone high surrogate")]
    [TestCase("""{"model": "kjv", "messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00x"}]}]}""", 400,
        "messages[0].content[0].text has a lone UTF-16 surrogate", TestName = "lone low surrogate in a chat part", Category = "chat")]
    [TestCase("""{"model": "kjv", "prompt": "x", "\ud800": 1}""", 400, "(a property name) has a lone UTF-16 surrogate", TestName = "lone surrogate in a property name")]
    [TestCase("""{"model": "kjv", "prompt": "x", "logit_bias": {"5": 1e999}}""", 400, "logit_bias", TestName = "logit bias beyond double")]
    [TestCase("""{"model": "kjv", "prompt": "x", "top_p": -1e999}""", 400, "top_p", TestName = "top_p beyond double")]
    public async Task BadRequestsGetOpenAiErrors(string body, int status, string mention)
    {
        string path = body.Contains("messages") ? "/v1/chat/completions" : "/v1/completions";
        using var r = await _http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));
        string text = await r.Content.ReadAsStringAsync();
        Assert.That((int)r.StatusCode, Is.EqualTo(status), text);
        var error = JsonDocument.Parse(text).RootElement.GetProperty("error");
        Assert.That(error.GetProperty("message").GetString() + error.GetProperty("code").ToString() + error.GetProperty("param").ToString(), Does.Contain(mention));
        Assert.That(error.GetProperty("type").GetString(), Is.Not.Empty);
        await Post("/v1/completions", new { model = "kjv", prompt = "And", max_tokens = 2 }); // still serving
    }

    [Test]
    public async Task NonUtf8AndOverlongPromptsAreRefused()
    {
        using var bad = new ByteArrayContent([.. "{\"model\":\"kjv\",\"prompt\":\""u8.ToArray(), 0xFF, 0xFE, .. "\"}"u8.ToArray()]);
        using var r = await _http.PostAsync("/v1/completions", bad);
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(await r.Content.ReadAsStringAsync(), Does.Contain("UTF-8"));
        var e = await Post("/v1/completions", new { model = "kjv", prompt = Enumerable.Repeat(5, 600).ToArray() }, HttpStatusCode.BadRequest);
        Assert.That(e.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("context_length_exceeded"));
    }

    /// <summary>
    /// A body above the limit gets 413 in OpenAI's shape, whether its Content-Length says so (the server answers before
    /// reading it) or it comes chunked; above Kestrel's own 30 MB this was a 500. Raw sockets: the server answers and
    /// closes while the client may still be sending.
    /// </summary>
    [TestCase(true)]
    [TestCase(false)]
    public async Task ABodyAboveTheLimitGets413(bool contentLength)
    {
        const int size = 31_000_000;
        var uri = _http.BaseAddress!;
        using var tcp = new System.Net.Sockets.TcpClient();
        await tcp.ConnectAsync(uri.Host, uri.Port);
        var stream = tcp.GetStream();
        string head = $"POST /v1/completions HTTP/1.1\r\nHost: {uri.Host}\r\nContent-Type: application/json\r\n"
            + (contentLength ? $"Content-Length: {size}\r\n" : "Transfer-Encoding: chunked\r\n") + "\r\n";
        await stream.WriteAsync(Encoding.ASCII.GetBytes(head));
        var send = Task.Run(async () =>
        {
            try
            {
                byte[] chunk = Encoding.ASCII.GetBytes(new string('a', 1 << 20));
                byte[] framed = contentLength ? chunk : [.. Encoding.ASCII.GetBytes($"{chunk.Length:x}\r\n"), .. chunk, .. "\r\n"u8.ToArray()];
                for (int sent = 0; sent < size; sent += chunk.Length) await stream.WriteAsync(framed);
            }
            catch (IOException)
            {
                // the server answered and closed the connection: it need not read the rest
            }
        });
        using var reader = new StreamReader(stream, Encoding.UTF8);
        string status = (await reader.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30)))!;
        Assert.That(status, Is.EqualTo("HTTP/1.1 413 Payload Too Large"));
        var headers = new List<string>();
        while (await reader.ReadLineAsync() is { Length: > 0 } line) headers.Add(line);
        Assert.That(headers, Does.Contain("Connection: close"));
        string rest = await reader.ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(30));
        string json = headers.Contains("Transfer-Encoding: chunked") ? rest.Split("\r\n")[1] : rest;
        var error = JsonDocument.Parse(json).RootElement.GetProperty("error");
        Assert.That(error.GetProperty("code").GetString(), Is.EqualTo("request_too_large"));
        Assert.That(error.GetProperty("message").GetString(), Does.Contain("at most 4194304 are accepted"));
        await send.WaitAsync(TimeSpan.FromSeconds(30));
        await Post("/v1/completions", new { model = "kjv", prompt = "And", max_tokens = 2 }); // still serving
    }

    [Test]
    public async Task ModelsHealthAndMetricsMove()
    {
        var models = JsonDocument.Parse(await _http.GetStringAsync("/v1/models")).RootElement;
        Assert.That(models.GetProperty("data")[0].GetProperty("id").GetString(), Is.EqualTo("kjv"));
        Assert.That(await _http.GetStringAsync("/health"), Does.Contain("ok"));
        double before = double.Parse(Metric("xlstm_generation_tokens_total"));
        double finished = double.Parse(Metric("xlstm_request_success_total{finished_reason=\"length\"}"));
        await Post("/v1/completions", new { model = "kjv", prompt = "And", max_tokens = 5, temperature = 0 });
        Assert.That(double.Parse(Metric("xlstm_generation_tokens_total")), Is.EqualTo(before + 5));
        Assert.That(double.Parse(Metric("xlstm_request_success_total{finished_reason=\"length\"}")), Is.EqualTo(finished + 1));
        Assert.That(Metric("xlstm_time_to_first_token_seconds_count"), Is.Not.EqualTo("0"));
    }

    [Test]
    public async Task ADisconnectedClientFreesItsSlot()
    {
        double cancelled = double.Parse(Metric("xlstm_request_success_total{finished_reason=\"abort\"}"));
        var uri = _http.BaseAddress!;
        using (var tcp = new System.Net.Sockets.TcpClient())
        {
            await tcp.ConnectAsync(uri.Host, uri.Port);
            var stream = tcp.GetStream();
            // ~a minute of generation if it were not dropped: the check below cannot pass by the request simply finishing
            string json = JsonSerializer.Serialize(new { model = "kjv", prompt = Prompt, max_tokens = 100_000, ignore_eos = true, stream = true });
            string request = $"POST /v1/completions HTTP/1.1\r\nHost: {uri.Host}\r\nContent-Type: application/json\r\nContent-Length: {Encoding.UTF8.GetByteCount(json)}\r\n\r\n{json}";
            await stream.WriteAsync(Encoding.UTF8.GetBytes(request));
            var buffer = new byte[256];
            Assert.That(await stream.ReadAsync(buffer), Is.GreaterThan(0), "the stream started");
            tcp.Client.LingerState = new System.Net.Sockets.LingerOption(true, 0); // close with a reset, as a killed client does
        }
        for (int i = 0; i < 100 && double.Parse(Metric("xlstm_request_success_total{finished_reason=\"abort\"}")) == cancelled; i++) await Task.Delay(50);
        Assert.That(double.Parse(Metric("xlstm_request_success_total{finished_reason=\"abort\"}")), Is.EqualTo(cancelled + 1), "the engine dropped the sequence");
        Assert.That(Metric("xlstm_num_requests_running"), Is.EqualTo("0"), "its slot is free");
    }

    [Test]
    public async Task ACancelledRequestLeavesTheEngineAtTheNextStep()
    {
        using var cts = new CancellationTokenSource();
        var reader = _engine.Submit(_session.Tokenizer!.Encode(Prompt), new Runtime.Generation.GenerationOptions { MaxNewTokens = 2000, Greedy = true, IgnoreEos = true }, cts.Token);
        await reader.ReadAsync(); // the first token
        cts.Cancel();
        int more = 0;
        await foreach (var _ in reader.ReadAllAsync()) more++;
        Assert.That(more, Is.LessThan(50), "the stream ends within a few steps of the cancellation, not after 2000 tokens");
    }

    [Test]
    public async Task AFullQueueAnswers429()
    {
        using var session = XLstmSession.Load(_model);
        using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 1, QueueCapacity = 1 });
        var (app, url) = await OpenAiServer.StartAsync(engine, new ServerOptions { Port = 0, ModelId = "kjv", Logs = NullLoggerProvider.Instance });
        await using var _ = app;
        using var http = new HttpClient { BaseAddress = new Uri(url) };
        var responses = await Task.WhenAll(Enumerable.Range(0, 12).Select(_ =>
            http.PostAsJsonAsync("/v1/completions", new { model = "kjv", prompt = Prompt, max_tokens = 200, temperature = 0 })));
        var codes = responses.Select(r => (int)r.StatusCode).ToList();
        Assert.That(codes, Does.Contain(429), "one running, one waiting: the rest are refused");
        Assert.That(codes, Does.Contain(200));
        var refused = responses.First(r => (int)r.StatusCode == 429);
        var body = JsonDocument.Parse(await refused.Content.ReadAsStringAsync()).RootElement;
        Assert.That(body.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("rate_limit_exceeded"));
        Assert.That(refused.Headers.RetryAfter?.Delta, Is.EqualTo(TimeSpan.FromSeconds(OpenAiServer.RetryAfterSeconds)), "clients are told when to come back");
    }

    [Test]
    public async Task ChatClientEqualsTheHttpApi()
    {
        IChatClient client = new XLstmChatClient(_engine, "kjv");
        var messages = new List<ChatMessage> { new(ChatRole.User, "Who was the son of Abraham?") };
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 30 };
        var response = await client.GetResponseAsync(messages, options);
        var json = await Post("/v1/chat/completions", new { model = "kjv", messages = new[] { new { role = "user", content = "Who was the son of Abraham?" } }, max_tokens = 30, temperature = 0 });
        Assert.That(response.Text, Is.EqualTo(json.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()), "the same text as the server, not trimmed otherwise");
        var streamed = new StringBuilder();
        await foreach (var u in client.GetStreamingResponseAsync(messages, options)) streamed.Append(u.Text);
        Assert.That(streamed.ToString(), Is.EqualTo(response.Text));
        int promptTokens = _session.Tokenizer!.Encode(ChatTemplate.Render([("user", "Who was the son of Abraham?")])).Length;
        Assert.That(response.Usage!.InputTokenCount, Is.EqualTo(promptTokens));
        Assert.That(response.Usage.OutputTokenCount, Is.EqualTo(json.GetProperty("usage").GetProperty("completion_tokens").GetInt32()));
        Assert.That(response.Usage.InputTokenCount, Is.EqualTo(json.GetProperty("usage").GetProperty("prompt_tokens").GetInt32()));
        Assert.That(client.GetService(typeof(ChatClientMetadata)), Is.InstanceOf<ChatClientMetadata>());
    }

    /// <summary>
    /// The HTTP <c>stop</c> parameter by value: the text is the free greedy text up to the first stop string (which is not
    /// sent), finish_reason "stop", streamed and not; of two stop strings the earlier one in the text wins; one that never
    /// comes leaves the text whole, finish_reason "length".
    /// </summary>
    [Test]
    public async Task StopCutsTheTextBeforeTheFirstStopString()
    {
        object Body(object? stop, bool stream = false) => new { model = "kjv", prompt = Prompt, max_tokens = 40, temperature = 0, stop, stream };
        var free = await Post("/v1/completions", Body(null));
        string text = free.GetProperty("choices")[0].GetProperty("text").GetString()!;
        Assert.That(free.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), Is.EqualTo("length"));
        string[] words = text.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assume.That(words, Has.Length.GreaterThan(8), text);
        string late = words[6], early = words[3]; // the 4th and 7th words: text before them is kept, spaces included
        int cut = Math.Min(text.IndexOf(early, StringComparison.Ordinal), text.IndexOf(late, StringComparison.Ordinal));
        foreach (object stop in new object[] { early, new[] { late, early } })
        {
            int at = stop is string one ? text.IndexOf(one, StringComparison.Ordinal) : cut;
            var json = await Post("/v1/completions", Body(stop));
            var choice = json.GetProperty("choices")[0];
            Assert.That(choice.GetProperty("text").GetString(), Is.EqualTo(text[..at]), $"stop {JsonSerializer.Serialize(stop)}");
            Assert.That(choice.GetProperty("finish_reason").GetString(), Is.EqualTo("stop"));
            var (streamed, finish) = await PostStream("/v1/completions", Body(stop, stream: true), chat: false);
            Assert.That((streamed, finish), Is.EqualTo((text[..at], "stop")), "streamed");
        }
        var never = await Post("/v1/completions", Body(new[] { "\u0007never" }));
        Assert.That(never.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(text));
        Assert.That(never.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), Is.EqualTo("length"));
    }

    /// <summary>
    /// The chat reply by value, whitespace included: greedy generation over the rendered transcript, cut at the next
    /// "\nUser:", with exactly the one space after "Assistant:" dropped; the client and the server send that text.
    /// </summary>
    [Test]
    public async Task ChatReplyIsTheTranscriptsContinuationLessOneSpace()
    {
        const string question = "Who was the son of Abraham?";
        var transcript = _session.Tokenizer!.Encode(ChatTemplate.Render([("user", question)]));
        using var g = new Runtime.Generation.Generator(_session);
        var sb = new StringBuilder();
        g.Generate([transcript], new Runtime.Generation.GenerationOptions { Greedy = true, MaxNewTokens = 30, StopStrings = [ChatTemplate.StopString] },
            (_, _, piece) => sb.Append(piece));
        string raw = sb.ToString();
        Assert.That(raw, Does.StartWith(" "), "the model writes a space after \"Assistant:\"");
        string expected = raw[1..];
        IChatClient client = new XLstmChatClient(_engine, "kjv");
        var response = await client.GetResponseAsync([new ChatMessage(ChatRole.User, question)], new ChatOptions { Temperature = 0, MaxOutputTokens = 30 });
        var json = await Post("/v1/chat/completions", new { model = "kjv", messages = new[] { new { role = "user", content = question } }, max_tokens = 30, temperature = 0 });
        Assert.That(response.Text, Is.EqualTo(expected), "the client");
        Assert.That(json.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), Is.EqualTo(expected), "the server");
    }

    /// <summary>
    /// loadtest against this server: its JSON counts what happened (every request answered 200, the greedy answers
    /// equal the same requests sent alone, every request's tokens arrived), and its statistics agree with its counts.
    /// </summary>
    [Test]
    public void LoadTestReportsWhatHappened()
    {
        using var tmp = TestPaths.Temp();
        string file = tmp.Sub("load.json");
        var r = CliTests.Run("loadtest", "--url", _server.Url, "--model-name", "kjv", "--clients", "3", "--seconds", "2", "--max-tokens", "6",
            "--prompt-tokens", "8:16", "--ignore-eos", "--check-alone", "3", "--unloaded", "1", "--out", file); // ids below the vocab_size the server reports
        Assert.That(r.Code, Is.Zero, r.Out + r.Err);
        var j = JsonDocument.Parse(File.ReadAllText(file)).RootElement;
        int ok = j.GetProperty("ok").GetInt32();
        long tokens = j.GetProperty("completion_tokens").GetInt64();
        double elapsed = j.GetProperty("elapsed_s").GetDouble();
        Assert.Multiple(() =>
        {
            Assert.That(ok, Is.GreaterThanOrEqualTo(3), "three clients, two seconds");
            Assert.That((j.GetProperty("requests").GetInt32(), j.GetProperty("failed").GetInt32()), Is.EqualTo((ok, 0)));
            Assert.That(j.GetProperty("status_codes").GetProperty("200").GetInt32(), Is.EqualTo(ok));
            Assert.That((j.GetProperty("checked_alone").GetInt32(), j.GetProperty("mismatches_vs_alone").GetInt32()), Is.EqualTo((3, 0)),
                "greedy answers under load equal the same requests alone");
            Assert.That(tokens, Is.EqualTo(6L * ok), "--ignore-eos: every request gets its 6 tokens");
            Assert.That(j.GetProperty("throughput_tokens_per_s").GetDouble(), Is.EqualTo(tokens / elapsed).Within(1e-9).Percent);
            foreach (var (name, count) in new[] { ("ttft_ms", ok), ("e2e_ms", ok), ("itl_ms", 5 * ok) })
            {
                var p = j.GetProperty(name);
                double[] q = [.. new[] { "p50", "p90", "p99", "max" }.Select(k => p.GetProperty(k).GetDouble())];
                Assert.That(p.GetProperty("count").GetInt32(), Is.EqualTo(count), name);
                Assert.That(q, Is.Ordered, $"{name}: p50 ≤ p90 ≤ p99 ≤ max");
                Assert.That(q[0], Is.GreaterThan(0), name);
            }
            Assert.That(j.GetProperty("unloaded_ttft_ms").GetProperty("count").GetInt32(), Is.EqualTo(1));
        });
    }

    /// <summary>
    /// The model object carries the vocabulary size (an extension field): loadtest draws token-id prompts below it, and
    /// refuses a --prompt-vocab above it instead of sending requests the server must refuse one by one.
    /// </summary>
    [Test]
    public async Task TheModelObjectNamesTheVocabularyAndLoadTestKeepsItsIdsInside()
    {
        var models = JsonDocument.Parse(await _http.GetStringAsync("/v1/models")).RootElement.GetProperty("data")[0];
        Assert.That(models.GetProperty("vocab_size").GetInt64(), Is.EqualTo(2048), "the shipped model's vocabulary");
        var r = CliTests.Run("loadtest", "--url", _server.Url, "--model-name", "kjv", "--clients", "1", "--seconds", "1", "--max-tokens", "2",
            "--prompt-tokens", "4:8", "--prompt-vocab", "5000", "--check-alone", "0");
        Assert.That(r.Code, Is.EqualTo(2), r.Out + r.Err);
        Assert.That(r.Err, Does.Contain("option --prompt-vocab: the model 'kjv' has a vocabulary of 2048 ids; found 5000."));
    }

    /// <summary>The value of a series, <c>name</c> or <c>name{label="value"}</c>, summed over its other labels (MetricsTests checks the format).</summary>
    private string Metric(string selector) =>
        PrometheusText.Parse(_http.GetStringAsync("/metrics").GetAwaiter().GetResult()).Value(selector).ToString(System.Globalization.CultureInfo.InvariantCulture);
}
