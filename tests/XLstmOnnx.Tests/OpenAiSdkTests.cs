using System.ClientModel;
using System.ClientModel.Primitives;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging.Abstractions;
using OpenAI;
using OpenAI.Chat;
using OpenAI.Models;
using XLstmOnnx.Cli.Serving;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Serving;

// evaluation-only members of the SDK used here: DeveloperChatMessage, ChatCompletionOptions.Seed and ReasoningEffortLevel
#pragma warning disable OPENAI001

namespace XLstmOnnx.Tests;

/// <summary>
/// The OpenAI API of the server checked with OpenAI's official .NET SDK (the <c>OpenAI</c> package) on a live loopback
/// server with the shipped model: typed calls where the SDK has them (chat, models), the SDK's own client pipeline (its
/// authentication, error classification and <see cref="ClientResultException"/>) with our JSON for the legacy completions
/// endpoint, whose typed client the SDK keeps internal, and plain HTTP for what the SDK cannot say (vLLM's extras).
/// </summary>
[TestFixture]
[NonParallelizable]
public class OpenAiSdkTests
{
    private ShippedModelServer _server = null!;
    private XLstmSession _session => _server.Session;
    private ServingEngine _engine => _server.Engine;
    private HttpClient _http => _server.Http;
    private OpenAIClientOptions _sdk = null!;
    private ChatClient _chat = null!;
    private Uri _completionsUri = null!;
    private const string Prompt = "And Moses said unto the LORD";
    private const string Question = "Who was the son of Abraham?";

    [OneTimeSetUp]
    public async Task Start()
    {
        _server = await ShippedModelServer.StartAsync(new ServingOptions { MaxBatch = 8, QueueCapacity = 64 },
            new ServerOptions { ModelId = "kjv", MaxPromptTokens = 512, Logs = NullLoggerProvider.Instance });
        string url = _server.Url;
        _sdk = new OpenAIClientOptions { Endpoint = new Uri(url + "/v1"), RetryPolicy = new ClientRetryPolicy(0) };
        _chat = new ChatClient("kjv", new ApiKeyCredential("unused"), _sdk);
        _completionsUri = new Uri(url + "/v1/completions");
    }

    [OneTimeTearDown]
    public async Task Stop() => await _server.DisposeAsync();

    private static ChatCompletionOptions Greedy(int max = 24) => new() { Temperature = 0, MaxOutputTokenCount = max };

    /// <summary>POSTs a completion through the SDK's client pipeline; a non-2xx answer surfaces as the SDK's ClientResultException.</summary>
    private async Task<PipelineResponse> Send(Dictionary<string, object?> fields, bool stream)
    {
        fields["model"] = "kjv";
        using var message = _chat.Pipeline.CreateMessage();
        message.Request.Method = "POST";
        message.Request.Uri = _completionsUri;
        message.Request.Headers.Set("Content-Type", "application/json");
        message.Request.Content = BinaryContent.Create(BinaryData.FromObjectAsJson(fields));
        message.BufferResponse = !stream;
        await _chat.Pipeline.SendAsync(message);
        var response = message.Response!;
        if (response.IsError) throw new ClientResultException(response);
        return stream ? message.ExtractResponse()! : response;
    }

    /// <summary>A completion (the SDK's pipeline, our JSON).</summary>
    private async Task<JsonElement> Complete(object body)
    {
        var response = await Send(new Dictionary<string, object?>(Fields(body)), stream: false);
        return JsonDocument.Parse(response.Content.ToString()).RootElement.Clone();
    }

    /// <summary>A streamed completion: the data chunks before [DONE].</summary>
    private async Task<List<JsonElement>> CompleteStreaming(object body)
    {
        using var response = await Send(new Dictionary<string, object?>(Fields(body)) { ["stream"] = true }, stream: true);
        var chunks = new List<JsonElement>();
        bool done = false;
        using var reader = new StreamReader(response.ContentStream!);
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            if (line == "data: [DONE]") { done = true; break; }
            chunks.Add(JsonDocument.Parse(line[6..]).RootElement.Clone());
        }
        Assert.That(done, "the stream ends with [DONE]");
        return chunks;
    }

    private static IEnumerable<KeyValuePair<string, object?>> Fields(object body) =>
        JsonSerializer.SerializeToElement(body).EnumerateObject().Select(p => new KeyValuePair<string, object?>(p.Name, p.Value));

    private async Task<(HttpStatusCode Status, JsonElement Body)> Http(string path, string json)
    {
        using var r = await _http.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
        string text = await r.Content.ReadAsStringAsync();
        return (r.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    private static void ExpectRefusal(Func<Task> call, int status, string param)
    {
        var e = Assert.ThrowsAsync<ClientResultException>(async () => await call())!;
        Assert.That(e.Status, Is.EqualTo(status), e.Message);
        string body = e.GetRawResponse()!.Content.ToString();
        var error = JsonDocument.Parse(body).RootElement.GetProperty("error");
        Assert.That(error.GetProperty("param").GetString(), Is.EqualTo(param), body);
        Assert.That(error.GetProperty("message").GetString(), Does.Contain(param.Split('.')[0]), body);
        Assert.That(error.GetProperty("type").GetString(), Is.EqualTo("invalid_request_error"), body);
    }

    /// <summary>log-softmax of the model's logits after <paramref name="prompt"/>, computed directly (no server).</summary>
    private double[] LogSoftmaxAfter(int[] prompt)
    {
        var state = _session.CreateState(1);
        var logits = _session.Run(prompt.Select(t => (long)t).ToArray(), prompt.Length, state);
        var row = logits.At(0, prompt.Length - 1).ToArray();
        int vocab = _session.Tokenizer!.Count;
        double max = double.NegativeInfinity;
        for (int i = 0; i < vocab; i++) max = Math.Max(max, row[i]);
        double sum = 0;
        for (int i = 0; i < vocab; i++) sum += Math.Exp(row[i] - max);
        double lse = max + Math.Log(sum);
        return [.. Enumerable.Range(0, vocab).Select(i => row[i] - lse)];
    }

    [Test]
    public async Task ChatTextHasNoLeadingSpaceAndIsTheSameStreamedAndNot()
    {
        var messages = new List<ChatMessage> { new UserChatMessage(Question) };
        ChatCompletion completion = await _chat.CompleteChatAsync(messages, Greedy());
        string text = completion.Content[0].Text;
        Assert.That(text, Is.Not.Empty);
        Assert.That(text, Does.Not.StartWith(" "), "the space after 'Assistant:' is dropped");
        var streamed = new StringBuilder();
        ChatTokenUsage? usage = null;
        await foreach (var u in _chat.CompleteChatStreamingAsync(messages, Greedy()))
        {
            foreach (var part in u.ContentUpdate) streamed.Append(part.Text);
            usage ??= u.Usage;
        }
        Assert.That(streamed.ToString(), Is.EqualTo(text));
        Assert.That(usage, Is.Not.Null, "the SDK asks for stream_options.include_usage; the last chunk carries the usage");
        Assert.That(usage!.OutputTokenCount, Is.EqualTo(completion.Usage.OutputTokenCount));
        Assert.That(usage.InputTokenCount, Is.EqualTo(completion.Usage.InputTokenCount));
        Assert.That(completion.Usage.InputTokenCount, Is.EqualTo(_session.Tokenizer!.Encode(ChatTemplate.Render([("user", Question)])).Length));
    }

    [Test]
    public async Task ChatLogProbsAreTheModelsAndStreamTheSame()
    {
        var messages = new List<ChatMessage> { new UserChatMessage(Question) };
        var options = Greedy(12);
        options.IncludeLogProbabilities = true;
        options.TopLogProbabilityCount = 5;
        ChatCompletion completion = await _chat.CompleteChatAsync(messages, options);
        var lps = completion.ContentTokenLogProbabilities;
        Assert.That(lps, Has.Count.EqualTo(completion.Usage.OutputTokenCount), "one entry per generated token");
        foreach (var lp in lps)
        {
            Assert.That(lp.TopLogProbabilities, Has.Count.EqualTo(5));
            Assert.That(lp.TopLogProbabilities.Select(t => t.LogProbability), Is.Ordered.Descending);
            // greedy: the chosen token is the most likely one
            Assert.That(lp.Token, Is.EqualTo(lp.TopLogProbabilities[0].Token));
            Assert.That(lp.LogProbability, Is.EqualTo(lp.TopLogProbabilities[0].LogProbability));
            Assert.That(Encoding.UTF8.GetString(lp.Utf8Bytes!.Value.ToArray()), Is.EqualTo(lp.Token));
        }
        Assert.That(string.Concat(lps.Select(l => l.Token)), Does.StartWith(" " + completion.Content[0].Text), "the tokens spell the reply (with its leading space)");
        // the first token's log-probability is the model's own: log-softmax of its logits after the prompt
        int[] prompt = _session.Tokenizer!.Encode(ChatTemplate.Render([("user", Question)]));
        var expected = LogSoftmaxAfter(prompt);
        int first = _session.Tokenizer.Encode(lps[0].Token)[0];
        Assert.That(lps[0].LogProbability, Is.EqualTo(expected[first]).Within(1e-4));
        Assert.That(lps[0].TopLogProbabilities[1].LogProbability, Is.EqualTo(expected.OrderDescending().ElementAt(1)).Within(1e-4));

        var streamed = new List<ChatTokenLogProbabilityDetails>();
        await foreach (var u in _chat.CompleteChatStreamingAsync(messages, options)) streamed.AddRange(u.ContentTokenLogProbabilities);
        Assert.That(streamed.Select(l => (l.Token, l.LogProbability)), Is.EqualTo(lps.Select(l => (l.Token, l.LogProbability))));
    }

    [Test]
    public async Task CompletionLogProbsStreamedAndNot()
    {
        var json = await Complete(new { prompt = Prompt, max_tokens = 10, temperature = 0, logprobs = 3, ignore_eos = true });
        var choice = json.GetProperty("choices")[0];
        var lp = choice.GetProperty("logprobs");
        string[] tokens = [.. lp.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()!)];
        float[] values = [.. lp.GetProperty("token_logprobs").EnumerateArray().Select(t => t.GetSingle())];
        int[] offsets = [.. lp.GetProperty("text_offset").EnumerateArray().Select(t => t.GetInt32())];
        var tops = lp.GetProperty("top_logprobs").EnumerateArray().ToList();
        Assert.That(tokens, Has.Length.EqualTo(10));
        Assert.That(string.Concat(tokens), Is.EqualTo(choice.GetProperty("text").GetString()));
        for (int i = 0; i < 10; i++)
        {
            Assert.That(offsets[i], Is.EqualTo(string.Concat(tokens[..i]).Length), $"text_offset {i}");
            var top = tops[i].EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetSingle());
            Assert.That(top, Has.Count.InRange(3, 4), "the 3 most likely, and the chosen one");
            Assert.That(top[tokens[i]], Is.EqualTo(values[i]));
            Assert.That(values[i], Is.EqualTo(top.Values.Max()), "greedy chose the most likely");
        }
        Assert.That(values[0], Is.EqualTo(LogSoftmaxAfter(_session.Tokenizer!.Encode(Prompt)).Max()).Within(1e-4));

        // sampled: the chosen token is in each top dict even when it is not among the most likely
        var sampled = await Complete(new { prompt = Prompt, max_tokens = 16, temperature = 2.0, seed = 11, logprobs = 1, ignore_eos = true });
        var slp = sampled.GetProperty("choices")[0].GetProperty("logprobs");
        var stokens = slp.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()!).ToList();
        var stops = slp.GetProperty("top_logprobs").EnumerateArray().ToList();
        for (int i = 0; i < stokens.Count; i++) Assert.That(stops[i].EnumerateObject().Select(p => p.Name), Does.Contain(stokens[i]), $"token {i}");
        Assert.That(stops.Count(t => t.EnumerateObject().Count() == 2), Is.GreaterThan(0), "some sampled token was not the most likely (the check has teeth)");

        var chunks = await CompleteStreaming(new { prompt = Prompt, max_tokens = 10, temperature = 0, logprobs = 3, ignore_eos = true });
        var streamed = chunks.Select(c => c.GetProperty("choices")[0].GetProperty("logprobs")).ToList();
        Assert.That(streamed.Select(s => s.GetProperty("tokens")[0].GetString()), Is.EqualTo(tokens));
        Assert.That(streamed.Select(s => s.GetProperty("token_logprobs")[0].GetSingle()), Is.EqualTo(values));
        Assert.That(streamed.Select(s => s.GetProperty("text_offset")[0].GetInt32()), Is.EqualTo(offsets));
    }

    [Test]
    public async Task EchoPrependsThePromptAndRefusesLogProbs()
    {
        var plain = await Complete(new { prompt = Prompt, max_tokens = 8, temperature = 0 });
        var echo = await Complete(new { prompt = Prompt, max_tokens = 8, temperature = 0, echo = true });
        string generated = plain.GetProperty("choices")[0].GetProperty("text").GetString()!;
        Assert.That(echo.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(Prompt + generated));
        var ids = _session.Tokenizer!.Encode(Prompt);
        var echoIds = await Complete(new { prompt = ids, max_tokens = 8, temperature = 0, echo = true });
        Assert.That(echoIds.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(Prompt + generated), "token-id prompts are decoded");
        var chunks = await CompleteStreaming(new { prompt = Prompt, max_tokens = 8, temperature = 0, echo = true });
        Assert.That(string.Concat(chunks.Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString())), Is.EqualTo(Prompt + generated));
        ExpectRefusal(() => Complete(new { prompt = Prompt, max_tokens = 8, echo = true, logprobs = 1 }), 400, "echo");
    }

    [Test]
    public async Task AListOfPromptsGetsNChoicesEachNumberedAsOpenAiDoes()
    {
        string other = "In the beginning God created";
        var json = await Complete(new { prompt = new[] { Prompt, other }, n = 2, max_tokens = 12, temperature = 0.9, seed = 5 });
        var choices = json.GetProperty("choices").EnumerateArray().OrderBy(c => c.GetProperty("index").GetInt32()).ToList();
        Assert.That(choices.Select(c => c.GetProperty("index").GetInt32()), Is.EqualTo(new[] { 0, 1, 2, 3 }));
        // choice index i = prompt × n + j samples with seed + i: index 2 is the other prompt's first choice, seed 7
        for (int i = 0; i < 4; i++)
        {
            var alone = await Complete(new { prompt = i < 2 ? Prompt : other, max_tokens = 12, temperature = 0.9, seed = 5 + i });
            Assert.That(choices[i].GetProperty("text").GetString(), Is.EqualTo(alone.GetProperty("choices")[0].GetProperty("text").GetString()), $"choice {i}");
        }
        int promptTokens = 2 * (_session.Tokenizer!.Encode(Prompt).Length + _session.Tokenizer.Encode(other).Length);
        Assert.That(json.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(promptTokens));
        var ids = await Complete(new { prompt = new[] { _session.Tokenizer.Encode(Prompt), _session.Tokenizer.Encode(other) }, max_tokens = 6, temperature = 0 });
        Assert.That(ids.GetProperty("choices").GetArrayLength(), Is.EqualTo(2), "a list of token-id prompts");
    }

    [Test]
    public async Task ContentPartsAndTheDeveloperRole()
    {
        ChatCompletion whole = await _chat.CompleteChatAsync([new SystemChatMessage("Speak as the scriptures."), new UserChatMessage(Question)], Greedy());
        ChatCompletion parts = await _chat.CompleteChatAsync([
            new DeveloperChatMessage("Speak as the scriptures."),
            new UserChatMessage(ChatMessageContentPart.CreateTextPart("Who was the son "), ChatMessageContentPart.CreateTextPart("of Abraham?")),
        ], Greedy());
        Assert.That(parts.Content[0].Text, Is.EqualTo(whole.Content[0].Text), "text parts are joined; developer is system");
        Assert.That(parts.Usage.InputTokenCount, Is.EqualTo(whole.Usage.InputTokenCount));
        ExpectRefusal(() => _chat.CompleteChatAsync([new UserChatMessage(ChatMessageContentPart.CreateTextPart("Look:"),
            ChatMessageContentPart.CreateImagePart(new Uri("http://127.0.0.1/a.png")))], Greedy()), 400, "messages");
        ExpectRefusal(() => _chat.CompleteChatAsync([new ToolChatMessage("call_1", "42")], Greedy()), 400, "messages");
    }

    [Test]
    public async Task LogitBiasBansAndForcesTokens()
    {
        var ids = await Complete(new { prompt = Prompt, max_tokens = 6, temperature = 0, return_token_ids = true });
        int first = ids.GetProperty("choices")[0].GetProperty("token_ids")[0].GetInt32();
        var banned = await Complete(new { prompt = Prompt, max_tokens = 6, temperature = 0, return_token_ids = true, logit_bias = new Dictionary<string, int> { [first.ToString()] = -100 } });
        Assert.That(banned.GetProperty("choices")[0].GetProperty("token_ids").EnumerateArray().Select(t => t.GetInt32()), Does.Not.Contain(first));

        // through the SDK's chat: +100 on one token makes the greedy reply that token, again and again
        int forced = _session.Tokenizer!.Encode(" Amen")[0];
        var options = Greedy(4);
        options.LogitBiases.Add(forced, 100);
        ChatCompletion completion = await _chat.CompleteChatAsync([new UserChatMessage(Question)], options);
        string piece = _session.Tokenizer.Decode([forced]);
        Assert.That(completion.Content[0].Text, Is.EqualTo(new ChatReply().Next(string.Concat(Enumerable.Repeat(piece, 4)))));
        options.LogitBiases[forced] = 101;
        ExpectRefusal(() => _chat.CompleteChatAsync([new UserChatMessage(Question)], options), 400, "logit_bias");
    }

    [TestCase("""{"abc": 5}""", TestName = "logit_bias key that is not an id")]
    [TestCase("""{"99999": 5}""", TestName = "logit_bias id past the vocabulary")]
    [TestCase("""{"-1": 5}""", TestName = "logit_bias negative id")]
    [TestCase("""{"5": -100.5}""", TestName = "logit_bias value below -100")]
    [TestCase("""{"5": "x"}""", TestName = "logit_bias value not a number")]
    [TestCase("""[1, 2]""", TestName = "logit_bias not an object")]
    public async Task LogitBiasEdgeCasesAreRefused(string bias)
    {
        var (status, body) = await Http("/v1/completions", $$"""{"model": "kjv", "prompt": "And", "max_tokens": 2, "logit_bias": {{bias}}}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.BadRequest), body.ToString());
        Assert.That(body.GetProperty("error").GetProperty("param").GetString(), Is.EqualTo("logit_bias"));
        var (ok, _) = await Http("/v1/completions", """{"model": "kjv", "prompt": "And", "max_tokens": 2, "logit_bias": {}}""");
        Assert.That(ok, Is.EqualTo(HttpStatusCode.OK), "an empty bias is none");
    }

    [Test]
    public async Task PresenceAndFrequencyPenaltiesCountTheOutputOnly()
    {
        var messages = new List<ChatMessage> { new UserChatMessage(Question) };
        var plain = Greedy(40);
        plain.IncludeLogProbabilities = true;
        var penalised = Greedy(40);
        penalised.IncludeLogProbabilities = true;
        penalised.PresencePenalty = 2;
        penalised.FrequencyPenalty = 2;
        ChatCompletion a = await _chat.CompleteChatAsync(messages, plain);
        ChatCompletion b = await _chat.CompleteChatAsync(messages, penalised);
        var ta = a.ContentTokenLogProbabilities.Select(t => t.Token).ToList();
        var tb = b.ContentTokenLogProbabilities.Select(t => t.Token).ToList();
        Assert.That(tb[0], Is.EqualTo(ta[0]), "nothing is generated before the first token: the prompt's tokens are not penalised");
        Assert.That(tb, Is.Not.EqualTo(ta), "the penalties change the reply");
        Assert.That(ta.GroupBy(t => t).Max(g => g.Count()), Is.GreaterThan(1), "plain greedy repeats a token (the check has teeth)");
        int repeatsA = ta.Count - ta.Distinct().Count(), repeatsB = tb.Count - tb.Distinct().Count();
        Assert.That(repeatsB, Is.LessThan(repeatsA), "fewer repeated tokens under the penalties");
        penalised.PresencePenalty = 2.5f;
        ExpectRefusal(() => _chat.CompleteChatAsync(messages, penalised), 400, "presence_penalty");
    }

    [Test]
    public async Task StreamOptionsIncludeUsageSendsAFinalUsageChunk()
    {
        var chunks = await CompleteStreaming(new { prompt = Prompt, max_tokens = 5, temperature = 0, stream_options = new { include_usage = true } });
        var last = chunks[^1];
        Assert.That(last.GetProperty("choices").GetArrayLength(), Is.Zero);
        Assert.That(last.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(5));
        Assert.That(last.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(_session.Tokenizer!.Encode(Prompt).Length));
        Assert.That(chunks[..^1].Select(c => c.GetProperty("usage").ValueKind), Is.All.EqualTo(JsonValueKind.Null), "the others carry usage: null");
        var without = await CompleteStreaming(new { prompt = Prompt, max_tokens = 5, temperature = 0 });
        Assert.That(without.Select(c => c.TryGetProperty("usage", out _)), Is.All.False);
        ExpectRefusal(() => Complete(new { prompt = Prompt, max_tokens = 5, stream_options = new { include_usage = true } }), 400, "stream_options");
    }

    [Test]
    public async Task ModelsByIdAndUnknownRoutesAnswerOpenAiErrors()
    {
        var models = new OpenAIModelClient(new ApiKeyCredential("unused"), _sdk);
        OpenAIModel model = await models.GetModelAsync("kjv");
        Assert.That(model.Id, Is.EqualTo("kjv"));
        var e = Assert.ThrowsAsync<ClientResultException>(async () => await models.GetModelAsync("gpt-4"))!;
        Assert.That(e.Status, Is.EqualTo(404));
        Assert.That(JsonDocument.Parse(e.GetRawResponse()!.Content.ToString()).RootElement.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("model_not_found"));
        foreach (var (method, path, status) in new[] { ("GET", "/v1/nothing", 404), ("POST", "/v1/embeddings", 404), ("GET", "/v1/completions", 405) })
        {
            using var r = await _http.SendAsync(new HttpRequestMessage(new HttpMethod(method), path));
            Assert.That((int)r.StatusCode, Is.EqualTo(status), $"{method} {path}");
            var error = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
            Assert.That(error.GetProperty("message").GetString(), Does.Contain(path));
            Assert.That(error.GetProperty("type").GetString(), Is.EqualTo("invalid_request_error"));
        }
    }

    [Test]
    public void UnsupportedFieldsAreRefusedNamingThem()
    {
        var messages = new List<ChatMessage> { new UserChatMessage(Question) };
        var tools = Greedy();
        tools.Tools.Add(ChatTool.CreateFunctionTool("lookup", "Looks a verse up."));
        ExpectRefusal(() => _chat.CompleteChatAsync(messages, tools), 400, "tools");
        ExpectRefusal(() => _chat.CompleteChatAsync(messages, new ChatCompletionOptions { ResponseFormat = ChatResponseFormat.CreateJsonObjectFormat() }), 400, "response_format");
        ExpectRefusal(() => _chat.CompleteChatAsync(messages, new ChatCompletionOptions { StoredOutputEnabled = true }), 400, "store");
        ExpectRefusal(() => _chat.CompleteChatAsync(messages, new ChatCompletionOptions { ReasoningEffortLevel = ChatReasoningEffortLevel.Low }), 400, "reasoning_effort");
        var unknown = Greedy();
#pragma warning disable SCME0001 // JsonPatch: the SDK's way to send a field it has no property for
        unknown.Patch.Set("$.frobnicate"u8, 3);
#pragma warning restore SCME0001
        ExpectRefusal(() => _chat.CompleteChatAsync(messages, unknown), 400, "frobnicate");
        ExpectRefusal(() => Complete(new { prompt = Prompt, n = 1, best_of = 3 }), 400, "best_of");
        ExpectRefusal(() => Complete(new { prompt = Prompt, suffix = "Amen." }), 400, "suffix");
        ExpectRefusal(() => Complete(new { prompt = Prompt, logprobs = 21 }), 400, "logprobs");
        ExpectRefusal(() => Complete(new { prompt = Prompt, unknown_field = 1 }), 400, "unknown_field");
    }

    [Test]
    public async Task AcceptedNoOpFieldsAndTheDefaultChoiceFieldsPass()
    {
        // fields that change nothing for a local model are accepted, not refused
        var (status, body) = await Http("/v1/chat/completions", """
            {"model": "kjv", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "user": "u1", "safety_identifier": "s",
             "parallel_tool_calls": false, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "modalities": ["text"],
             "service_tier": "auto", "store": false, "best_of_unused": null}
            """);
        Assert.That(status, Is.EqualTo(HttpStatusCode.BadRequest), "an unknown field is refused even when null");
        Assert.That(body.GetProperty("error").GetProperty("param").GetString(), Is.EqualTo("best_of_unused"));
        (status, body) = await Http("/v1/chat/completions", """
            {"model": "kjv", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "user": "u1", "safety_identifier": "s",
             "parallel_tool_calls": false, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "modalities": ["text"],
             "service_tier": "auto", "store": false}
            """);
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), body.ToString());
    }

    [Test]
    public async Task VllmSamplingExtras()
    {
        var greedy = await Complete(new { prompt = Prompt, max_tokens = 12, temperature = 0, return_token_ids = true, ignore_eos = true });
        int[] ids = [.. greedy.GetProperty("choices")[0].GetProperty("token_ids").EnumerateArray().Select(t => t.GetInt32())];
        string text = greedy.GetProperty("choices")[0].GetProperty("text").GetString()!;
        // top_k 1 and min_p near 1 leave only the most likely token: sampling equals greedy
        var topK = await Complete(new { prompt = Prompt, max_tokens = 12, temperature = 1.0, top_k = 1, seed = 3, ignore_eos = true });
        Assert.That(topK.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(text));
        var minP = await Complete(new { prompt = Prompt, max_tokens = 12, temperature = 1.0, min_p = 0.999, seed = 3, ignore_eos = true });
        Assert.That(minP.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(text));
        var rep = await Complete(new { prompt = Prompt, max_tokens = 12, temperature = 0, repetition_penalty = 2.0, ignore_eos = true });
        Assert.That(rep.GetProperty("choices")[0].GetProperty("text").GetString(), Is.Not.EqualTo(text), "the repetition penalty counts the prompt too");
        // stop_token_ids: generation ends at the first occurrence of the id, with it
        int stopAt = Array.IndexOf(ids, ids[4]);
        var stopped = await Complete(new { prompt = Prompt, max_tokens = 12, temperature = 0, stop_token_ids = new[] { ids[4] }, return_token_ids = true });
        var choice = stopped.GetProperty("choices")[0];
        Assert.That(choice.GetProperty("token_ids").EnumerateArray().Select(t => t.GetInt32()), Is.EqualTo(ids[..(stopAt + 1)]));
        Assert.That(choice.GetProperty("finish_reason").GetString(), Is.EqualTo("stop"));
        foreach (var (field, value) in new (string, object)[] { ("top_k", -2), ("min_p", 1.0), ("repetition_penalty", 0), ("stop_token_ids", new[] { -1 }), ("ignore_eos", "yes") })
        {
            var (status, body) = await Http("/v1/completions", JsonSerializer.Serialize(new Dictionary<string, object> { ["model"] = "kjv", ["prompt"] = "And", [field] = value }));
            Assert.That(status, Is.EqualTo(HttpStatusCode.BadRequest), field);
            Assert.That(body.GetProperty("error").GetProperty("param").GetString(), Is.EqualTo(field));
        }
    }

    [Test]
    public async Task TokenizeAndDetokenize()
    {
        var (status, body) = await Http("/tokenize", JsonSerializer.Serialize(new { model = "kjv", prompt = Prompt, return_token_strs = true }));
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), body.ToString());
        int[] ids = [.. body.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32())];
        Assert.That(ids, Is.EqualTo(_session.Tokenizer!.Encode(Prompt, addSpecialTokens: true)));
        Assert.That(body.GetProperty("count").GetInt32(), Is.EqualTo(ids.Length));
        Assert.That(body.GetProperty("max_model_len").GetInt32(), Is.EqualTo(512));
        Assert.That(string.Concat(body.GetProperty("token_strs").EnumerateArray().Select(t => t.GetString())), Is.EqualTo(Prompt));
        (status, body) = await Http("/detokenize", JsonSerializer.Serialize(new { model = "kjv", tokens = ids }));
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), body.ToString());
        Assert.That(body.GetProperty("prompt").GetString(), Is.EqualTo(Prompt));
        (status, body) = await Http("/tokenize", JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = Question } } }));
        Assert.That(body.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()), Is.EqualTo(_session.Tokenizer.Encode(ChatTemplate.Render([("user", Question)]))));
        (status, body) = await Http("/detokenize", """{"tokens": [1, 99999]}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(body.GetProperty("error").GetProperty("param").GetString(), Is.EqualTo("tokens"));
        (status, body) = await Http("/tokenize", """{"prompt": "x", "model": "gpt-4"}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.NotFound));
    }

    [Test]
    public async Task SamplingWithoutASeedReportsTheSeedItUsed()
    {
        var messages = new List<ChatMessage> { new UserChatMessage(Question) };
        var options = new ChatCompletionOptions { Temperature = 1.2f, MaxOutputTokenCount = 16 };
        var first = await _chat.CompleteChatAsync(messages, options);
        Assert.That(first.GetRawResponse().Headers.TryGetValue(OpenAiServer.SeedHeader, out string? seed), $"the {OpenAiServer.SeedHeader} header");
        var second = await _chat.CompleteChatAsync(messages, options);
        second.GetRawResponse().Headers.TryGetValue(OpenAiServer.SeedHeader, out string? otherSeed);
        Assert.That(otherSeed, Is.Not.EqualTo(seed), "a random seed each time");
        options.Seed = long.Parse(seed!);
        var again = await _chat.CompleteChatAsync(messages, options);
        Assert.That(again.Value.Content[0].Text, Is.EqualTo(first.Value.Content[0].Text), "the reported seed repeats the text");
    }

    [Test]
    public async Task WithoutTemperatureTheModelsGenerationConfigDecides()
    {
        // the shipped model's generation_config.json has no do_sample: transformers' default, greedy
        Assert.That(_session.GenerationDefaults.DoSample, Is.False);
        var noTemperature = await Complete(new { prompt = Prompt, max_tokens = 12 });
        var greedy = await Complete(new { prompt = Prompt, max_tokens = 12, temperature = 0 });
        Assert.That(noTemperature.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(greedy.GetProperty("choices")[0].GetProperty("text").GetString()));
    }
}
