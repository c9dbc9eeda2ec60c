using System.Globalization;
using System.Text.Json;
using XLstmOnnx.Runtime.Generation;
using XLstmOnnx.Runtime.Serving;
using XLstmOnnx.Runtime.Tokenization;

namespace XLstmOnnx.Cli.Serving;

/// <summary>One prompt of a request: its ids, and its text for <c>echo</c> (null when not echoed).</summary>
internal sealed record PromptInput(int[] Ids, string? Text);

/// <summary>
/// A parsed completion or chat request. Choice <c>index</c> = prompt × N + j (OpenAI's numbering for a list of prompts)
/// samples with seed <see cref="Seed"/> + index.
/// </summary>
/// <param name="TokenIds">vLLM's <c>return_token_ids</c>: each choice also carries the ids it generated.</param>
/// <param name="IncludeUsage"><c>stream_options.include_usage</c>: a last chunk with the usage.</param>
/// <param name="Echo">Completions: the prompt text comes before each choice's text.</param>
/// <param name="LogProbs">Completions: <c>logprobs</c> (the top count); chat: <c>logprobs</c> true (with <c>top_logprobs</c> in the options).</param>
internal sealed record ApiRequest(
    IReadOnlyList<PromptInput> Prompts, GenerationOptions Options, int N, bool Stream, bool IncludeUsage, string Model,
    bool TokenIds, bool Echo, bool LogProbs, ulong Seed)
{
    public int Choices => Prompts.Count * N;

    public int PromptTokens => Prompts.Sum(p => p.Ids.Length) * N;
}

/// <summary>
/// Reads OpenAI request bodies (plus vLLM's extra sampling fields). Policy for fields: a field the server implements is
/// used; a field that changes nothing for a local model (<c>user</c>, <c>safety_identifier</c>, <c>parallel_tool_calls</c>,
/// <c>service_tier</c> "auto"/"default", a text-only <c>modalities</c> or <c>response_format</c>) is accepted; a field the
/// server cannot honour (<c>tools</c>, <c>response_format</c> json, <c>best_of</c> ≠ n, <c>echo</c> with <c>logprobs</c>,
/// <c>store</c>, <c>audio</c>, ...) is refused with a 400 that names it; and so is any field it does not know, as OpenAI's
/// own server does ("Unrecognized request argument supplied"): nothing a client sends is dropped without a word.
/// </summary>
internal static class OpenAiRequest
{
    /// <summary>Most top log-probabilities per token (the sampler's <c>top_logprobs</c> output).</summary>
    public const int MaxTopLogProbs = XLstmOnnx.Contract.SamplerModel.TopCount;

    private static readonly HashSet<string> Common =
    [
        "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed", "logit_bias",
        "presence_penalty", "frequency_penalty", "logprobs", "user",
        // vLLM's extra sampling fields
        "top_k", "min_p", "repetition_penalty", "ignore_eos", "stop_token_ids", "return_token_ids",
    ];

    private static readonly HashSet<string> CompletionFields = [.. Common, "prompt", "echo", "best_of", "suffix"];

    private static readonly HashSet<string> ChatFields =
    [
        .. Common, "messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
        "parallel_tool_calls", "functions", "function_call", "metadata", "store", "service_tier", "modalities", "audio",
        "prediction", "reasoning_effort", "web_search_options", "safety_identifier",
    ];

    private static readonly HashSet<string> MessageFields = ["role", "content", "name", "tool_calls", "tool_call_id", "function_call", "refusal", "audio"];

    public static ApiRequest Parse(JsonElement b, ServingEngine engine, ServerOptions o, bool chat)
    {
        foreach (var p in b.EnumerateObject())
        {
            if (!(chat ? ChatFields : CompletionFields).Contains(p.Name)) throw Unrecognized(p.Name);
        }
        var tokenizer = engine.Session.Tokenizer;
        string model = Str(b, "model") ?? throw new ApiError(400, "you must provide a model parameter", "model");
        if (model != o.ModelId) throw new ApiError(404, $"The model '{model}' does not exist; this server serves '{o.ModelId}'.", "model", "invalid_request_error", "model_not_found");
        RefuseUnsupported(b, chat);

        var stops = new List<string>();
        IReadOnlyList<PromptInput> prompts;
        bool echo = !chat && Bool(b, "echo");
        if (chat)
        {
            var messages = Messages(b);
            prompts = [new PromptInput(Tokenizer(tokenizer, "messages").Encode(ChatTemplate.Render(messages)), null)];
            stops.Add(ChatTemplate.StopString);
        }
        else
        {
            prompts = Prompts(b, engine, tokenizer, echo);
        }
        for (int i = 0; i < prompts.Count; i++)
        {
            string param = chat ? "messages" : "prompt";
            if (prompts[i].Ids.Length == 0) throw new ApiError(400, prompts.Count == 1 ? "the prompt is empty." : $"prompt {i} is empty.", param);
            if (prompts[i].Ids.Length > o.MaxPromptTokens)
            {
                throw new ApiError(400, $"The prompt{(prompts.Count == 1 ? "" : $" {i}")} has {prompts[i].Ids.Length} tokens; this server takes at most {o.MaxPromptTokens}.", param, code: "context_length_exceeded");
            }
        }

        var defaults = engine.Session.GenerationDefaults;
        string maxName = chat && b.TryGetProperty("max_completion_tokens", out var mct) && mct.ValueKind != JsonValueKind.Null ? "max_completion_tokens" : "max_tokens";
        // without max_tokens: generation_config.json's max_new_tokens, else OpenAI's 16 for completions (256 for chat)
        int maxTokens = Int(b, maxName) ?? Math.Min(defaults.MaxNewTokens ?? (chat ? 256 : 16), o.MaxTokensLimit);
        if (maxTokens < 1 || maxTokens > o.MaxTokensLimit) throw new ApiError(400, $"'{maxName}' must be between 1 and {o.MaxTokensLimit}; found {maxTokens}.", maxName);

        var options = defaults.Options(maxTokens) with { MaxNewTokens = maxTokens };
        // temperature decides greedy or sampled: 0 is greedy, above 0 samples; without it, generation_config.json's do_sample does
        if (Num(b, "temperature") is { } temperature)
        {
            if (temperature < 0 || temperature > 2) throw new ApiError(400, $"'temperature' must be between 0 and 2; found {Fmt(temperature)}.", "temperature");
            options = temperature == 0 ? options with { Greedy = true } : options with { Greedy = false, Temperature = temperature };
        }
        if (Num(b, "top_p") is { } topP)
        {
            if (!(topP > 0 && topP <= 1)) throw new ApiError(400, $"'top_p' must be in (0, 1]; found {Fmt(topP)}.", "top_p");
            options = options with { TopP = topP };
        }
        if (Int(b, "top_k") is { } topK)
        {
            if (topK < -1) throw new ApiError(400, $"'top_k' must be -1 or 0 (off) or positive; found {topK}.", "top_k");
            options = options with { TopK = Math.Max(0, topK) };
        }
        if (Num(b, "min_p") is { } minP)
        {
            if (!(minP >= 0 && minP < 1)) throw new ApiError(400, $"'min_p' must be in [0, 1); found {Fmt(minP)}.", "min_p");
            options = options with { MinP = minP };
        }
        if (Num(b, "repetition_penalty") is { } rep)
        {
            if (!(rep > 0 && rep <= 2)) throw new ApiError(400, $"'repetition_penalty' must be in (0, 2]; found {Fmt(rep)}.", "repetition_penalty");
            options = options with { RepetitionPenalty = rep };
        }
        foreach (string name in new[] { "presence_penalty", "frequency_penalty" })
        {
            if (Num(b, name) is not { } v) continue;
            if (!(v >= -2 && v <= 2)) throw new ApiError(400, $"'{name}' must be between -2 and 2; found {Fmt(v)}.", name);
            options = name == "presence_penalty" ? options with { PresencePenalty = v } : options with { FrequencyPenalty = v };
        }
        if (LogitBias(b, engine.Session.Manifest.VocabSize) is { } bias) options = options with { LogitBias = bias };

        bool logProbs;
        if (chat)
        {
            logProbs = Bool(b, "logprobs");
            int top = Int(b, "top_logprobs") ?? 0;
            if (top < 0 || top > MaxTopLogProbs) throw new ApiError(400, $"'top_logprobs' must be between 0 and {MaxTopLogProbs}; found {top}.", "top_logprobs");
            if (top > 0 && !logProbs) throw new ApiError(400, "'top_logprobs' needs 'logprobs' set to true.", "top_logprobs");
            options = options with { LogProbs = logProbs, TopLogProbs = top };
        }
        else
        {
            int? top = Int(b, "logprobs");
            if (top is < 0 or > MaxTopLogProbs) throw new ApiError(400, $"'logprobs' must be between 0 and {MaxTopLogProbs}; found {top}.", "logprobs");
            logProbs = top is not null;
            if (logProbs && echo)
            {
                throw new ApiError(400, "'echo' with 'logprobs' is not supported: the prompt tokens' log-probabilities would need the logits of every prompt position, "
                    + "which the serving engine does not keep; drop 'echo' (the prompt is known to you) or 'logprobs'.", "echo");
            }
            options = options with { LogProbs = logProbs, TopLogProbs = top ?? 0 };
        }

        int n = Int(b, "n") ?? 1;
        if (n < 1 || n > o.MaxN) throw new ApiError(400, $"'n' must be between 1 and {o.MaxN}; found {n}.", "n");
        if (!chat && Int(b, "best_of") is { } bestOf && bestOf != n)
        {
            throw new ApiError(400, $"'best_of' must equal 'n' ({n}) or be left out: choosing the best of several completions is not supported; found {bestOf}.", "best_of");
        }
        if (prompts.Count * n > engine.Options.QueueCapacity)
        {
            throw new ApiError(400, $"The request asks for {prompts.Count} prompts × n {n} = {prompts.Count * n} sequences; this server queues at most {engine.Options.QueueCapacity}.", chat ? "n" : "prompt");
        }
        if (b.TryGetProperty("stop", out var st) && st.ValueKind != JsonValueKind.Null)
        {
            if (st.ValueKind == JsonValueKind.String) stops.Add(st.GetString()!);
            else if (st.ValueKind == JsonValueKind.Array && st.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String) && st.GetArrayLength() <= 4) stops.AddRange(st.EnumerateArray().Select(x => x.GetString()!));
            else throw new ApiError(400, "'stop' must be a string or an array of at most 4 strings.", "stop");
            if (stops.Any(string.IsNullOrEmpty)) throw new ApiError(400, "'stop' strings must not be empty.", "stop");
        }
        var stopIds = new List<int>();
        if (b.TryGetProperty("stop_token_ids", out var sti) && sti.ValueKind != JsonValueKind.Null)
        {
            long vocab = engine.Session.Manifest.VocabSize;
            if (sti.ValueKind != JsonValueKind.Array) throw new ApiError(400, $"'stop_token_ids' must be an array of token ids; found {sti.ValueKind}.", "stop_token_ids");
            foreach (var x in sti.EnumerateArray())
            {
                stopIds.Add(x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out int id) && id >= 0 && id < vocab ? id
                    : throw new ApiError(400, $"'stop_token_ids': {x.GetRawText()} is not a token id in [0, {vocab}).", "stop_token_ids"));
            }
        }
        long? seed = b.TryGetProperty("seed", out var sd) && sd.ValueKind != JsonValueKind.Null
            ? (sd.ValueKind == JsonValueKind.Number && sd.TryGetInt64(out long given) ? given : throw new ApiError(400, $"'seed' must be an integer; found {sd.GetRawText()}.", "seed")) : null;
        bool stream = Bool(b, "stream");
        bool includeUsage = false;
        if (b.TryGetProperty("stream_options", out var so) && so.ValueKind != JsonValueKind.Null)
        {
            if (!stream) throw new ApiError(400, "'stream_options' is only allowed when 'stream' is true.", "stream_options");
            if (so.ValueKind != JsonValueKind.Object) throw new ApiError(400, $"'stream_options' must be an object; found {so.ValueKind}.", "stream_options");
            foreach (var p in so.EnumerateObject())
            {
                if (p.Name != "include_usage") throw Unrecognized("stream_options." + p.Name);
            }
            includeUsage = Bool(so, "include_usage", "stream_options.include_usage");
        }
        ulong seedUsed = seed is { } s ? unchecked((ulong)s) : (ulong)Random.Shared.NextInt64();
        options = options with
        {
            Seed = seedUsed,
            StopStrings = stops,
            StopTokenIds = stopIds,
            IgnoreEos = Bool(b, "ignore_eos"), // vLLM's: keep generating past the end-of-text token (benchmarks, tests)
        };
        return new ApiRequest(prompts, options, n, stream, includeUsage, model, Bool(b, "return_token_ids"), echo, logProbs, seedUsed);
    }

    /// <summary>Fields the server knows but cannot honour: a 400 naming each, unless its value asks for nothing.</summary>
    private static void RefuseUnsupported(JsonElement b, bool chat)
    {
        static bool Absent(JsonElement b, string name) => !b.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null;
        void Refuse(string name, string why) => throw new ApiError(400, $"'{name}' is not supported by this server: {why}.", name);
        if (!chat)
        {
            if (b.TryGetProperty("suffix", out var suffix) && suffix.ValueKind != JsonValueKind.Null && !(suffix.ValueKind == JsonValueKind.String && suffix.GetString() == ""))
            {
                Refuse("suffix", "the model continues text, it does not fill in between");
            }
            return;
        }
        if (b.TryGetProperty("tools", out var tools) && tools.ValueKind != JsonValueKind.Null && !(tools.ValueKind == JsonValueKind.Array && tools.GetArrayLength() == 0))
        {
            Refuse("tools", "the model has no tool-calling format");
        }
        if (b.TryGetProperty("tool_choice", out var tc) && tc.ValueKind != JsonValueKind.Null && !(tc.ValueKind == JsonValueKind.String && tc.GetString() == "none"))
        {
            Refuse("tool_choice", "the model has no tool-calling format (only \"none\" is accepted)");
        }
        if (!Absent(b, "functions")) Refuse("functions", "the model has no function-calling format");
        if (!Absent(b, "function_call")) Refuse("function_call", "the model has no function-calling format");
        if (b.TryGetProperty("response_format", out var rf) && rf.ValueKind != JsonValueKind.Null)
        {
            string? type = rf.ValueKind == JsonValueKind.Object && rf.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            if (type != "text" || rf.EnumerateObject().Count() != 1) Refuse("response_format", $"only {{\"type\": \"text\"}} is accepted (no constrained decoding); found {rf.GetRawText()}");
        }
        if (b.TryGetProperty("store", out var store) && store.ValueKind == JsonValueKind.True) Refuse("store", "completions are not stored");
        if (!Absent(b, "metadata")) Refuse("metadata", "it labels stored completions, and completions are not stored");
        if (b.TryGetProperty("service_tier", out var tier) && tier.ValueKind != JsonValueKind.Null && !(tier.ValueKind == JsonValueKind.String && tier.GetString() is "auto" or "default"))
        {
            Refuse("service_tier", "there is one tier (\"auto\" or \"default\" are accepted)");
        }
        if (b.TryGetProperty("modalities", out var mod) && mod.ValueKind != JsonValueKind.Null
            && !(mod.ValueKind == JsonValueKind.Array && mod.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String && x.GetString() == "text")))
        {
            Refuse("modalities", "the model writes text only ([\"text\"] is accepted)");
        }
        if (!Absent(b, "audio")) Refuse("audio", "the model writes text only");
        if (!Absent(b, "prediction")) Refuse("prediction", "predicted outputs are not used");
        if (!Absent(b, "reasoning_effort")) Refuse("reasoning_effort", "the model is not a reasoning model");
        if (!Absent(b, "web_search_options")) Refuse("web_search_options", "the server does not search the web");
        if (b.TryGetProperty("parallel_tool_calls", out var ptc) && ptc.ValueKind is not (JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null))
        {
            throw new ApiError(400, $"'parallel_tool_calls' must be a boolean; found {ptc.GetRawText()}.", "parallel_tool_calls");
        }
        _ = Str(b, "safety_identifier");
        _ = Str(b, "user");
    }

    /// <summary>The chat messages as (role, text): text parts are joined; other parts, tool messages and unknown fields get a 400.</summary>
    private static List<(string Role, string Content)> Messages(JsonElement b)
    {
        if (!b.TryGetProperty("messages", out var ms) || ms.ValueKind != JsonValueKind.Array || ms.GetArrayLength() == 0)
        {
            throw new ApiError(400, "'messages' must be a non-empty array of {role, content}.", "messages");
        }
        var list = new List<(string, string)>();
        int i = 0;
        foreach (var m in ms.EnumerateArray())
        {
            string at = $"messages[{i}]";
            if (m.ValueKind != JsonValueKind.Object) throw new ApiError(400, $"{at} must be an object {{role, content}}; found {m.ValueKind}.", "messages");
            foreach (var p in m.EnumerateObject())
            {
                if (!MessageFields.Contains(p.Name)) throw Unrecognized($"{at}.{p.Name}", "messages");
                if (p.Name is "role" or "content" || p.Value.ValueKind == JsonValueKind.Null) continue;
                string why = p.Name == "name" ? "participant names have no place in the transcript (System:, User:, Assistant:)" : "the model has no tool or audio format";
                throw new ApiError(400, $"{at}.{p.Name} is not supported: {why}.", "messages");
            }
            string role = m.TryGetProperty("role", out var r) && r.ValueKind == JsonValueKind.String ? r.GetString()! : "";
            if (!ChatTemplate.Roles.Contains(role))
            {
                throw new ApiError(400, $"{at}: message role must be {string.Join(", ", ChatTemplate.Roles)}; found \"{role}\".", "messages");
            }
            list.Add((role, Content(m, at)));
            i++;
        }
        return list;
    }

    /// <summary>A message's content: a string, or an array of text parts (joined as OpenAI does, with nothing between).</summary>
    private static string Content(JsonElement m, string at)
    {
        if (!m.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null) throw new ApiError(400, $"{at} needs a 'content'.", "messages");
        if (c.ValueKind == JsonValueKind.String) return c.GetString()!;
        if (c.ValueKind != JsonValueKind.Array) throw new ApiError(400, $"{at}.content must be a string or an array of text parts; found {c.ValueKind}.", "messages");
        var sb = new System.Text.StringBuilder();
        int j = 0;
        foreach (var part in c.EnumerateArray())
        {
            string p = $"{at}.content[{j++}]";
            string type = part.ValueKind == JsonValueKind.Object && part.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "";
            if (type != "text")
            {
                throw new ApiError(400, $"{p}: content parts of type \"{type}\" are not supported: the model reads text only (parts of type \"text\").", "messages");
            }
            foreach (var f in part.EnumerateObject())
            {
                if (f.Name is not ("type" or "text")) throw Unrecognized($"{p}.{f.Name}", "messages");
            }
            sb.Append(part.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String ? text.GetString()
                : throw new ApiError(400, $"{p} needs a string 'text'.", "messages"));
        }
        return sb.ToString();
    }

    /// <summary>
    /// <c>prompt</c>: a string, an array of token ids, or a list of either (each its own set of n choices); with echo,
    /// each prompt's text (ids are decoded).
    /// </summary>
    private static List<PromptInput> Prompts(JsonElement b, ServingEngine engine, HfTokenizer? tokenizer, bool echo)
    {
        if (!b.TryGetProperty("prompt", out var p)) throw new ApiError(400, "you must provide a prompt", "prompt");
        long vocab = engine.Session.Manifest.VocabSize;
        PromptInput Ids(JsonElement array, string at)
        {
            var ids = array.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out int id) && id >= 0 && id < vocab ? id
                : throw new ApiError(400, $"{at}: token id {x.GetRawText()} is not in [0, {vocab}).", "prompt")).ToArray();
            return new PromptInput(ids, echo ? Tokenizer(tokenizer, "echo").Decode(ids) : null);
        }
        PromptInput Text(string text) => new(Tokenizer(tokenizer, "prompt", "give the prompt as token ids").Encode(text), echo ? text : null);
        bool IsIds(JsonElement x) => x.ValueKind == JsonValueKind.Array && x.EnumerateArray().All(e => e.ValueKind == JsonValueKind.Number);
        if (p.ValueKind == JsonValueKind.String) return [Text(p.GetString()!)];
        if (p.ValueKind == JsonValueKind.Array && p.GetArrayLength() > 0)
        {
            if (IsIds(p)) return [Ids(p, "prompt")];
            if (p.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String)) return [.. p.EnumerateArray().Select(x => Text(x.GetString()!))];
            if (p.EnumerateArray().All(IsIds)) return [.. p.EnumerateArray().Select((x, i) => Ids(x, $"prompt[{i}]"))];
        }
        throw new ApiError(400, "'prompt' must be a string, an array of token ids, or a non-empty array of either.", "prompt");
    }

    /// <summary>OpenAI's <c>logit_bias</c>: {"token id": bias in [-100, 100]}.</summary>
    private static Dictionary<int, float>? LogitBias(JsonElement b, long vocab)
    {
        if (!b.TryGetProperty("logit_bias", out var lb) || lb.ValueKind == JsonValueKind.Null) return null;
        if (lb.ValueKind != JsonValueKind.Object) throw new ApiError(400, $"'logit_bias' must be an object of token id to bias; found {lb.ValueKind}.", "logit_bias");
        var bias = new Dictionary<int, float>();
        foreach (var p in lb.EnumerateObject())
        {
            if (!int.TryParse(p.Name, NumberStyles.None, CultureInfo.InvariantCulture, out int id) || id >= vocab)
            {
                throw new ApiError(400, $"'logit_bias' keys must be token ids in [0, {vocab}); found \"{p.Name}\".", "logit_bias");
            }
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetDouble(out double value) || value is < -100 or > 100)
            {
                throw new ApiError(400, $"'logit_bias' values must be numbers between -100 and 100; found {p.Value.GetRawText()} for token {id}.", "logit_bias");
            }
            bias[id] = (float)value;
        }
        return bias.Count > 0 ? bias : null;
    }

    /// <summary>
    /// The ids of one prompt as the completions API reads it (<c>prompt</c>: text or token ids), or of chat
    /// <c>messages</c> rendered as /tokenize renders them: what the prefix hand-off's export looks up.
    /// </summary>
    public static int[] PromptIds(JsonElement b, ServingEngine engine, ServerOptions o)
    {
        if (b.TryGetProperty("messages", out _)) return Tokenize(b, engine, o, out _);
        CheckModel(b, o);
        var prompts = Prompts(b, engine, engine.Session.Tokenizer, echo: false);
        return prompts.Count == 1 ? prompts[0].Ids : throw new ApiError(400, $"give one prompt; found {prompts.Count}.", "prompt");
    }

    /// <summary>vLLM's /tokenize body: a prompt (add_special_tokens) or chat messages; returns the ids.</summary>
    public static int[] Tokenize(JsonElement b, ServingEngine engine, ServerOptions o, out bool tokenStrs)
    {
        bool chat = b.TryGetProperty("messages", out _);
        HashSet<string> fields = chat ? ["model", "messages", "add_generation_prompt", "return_token_strs"] : ["model", "prompt", "add_special_tokens", "return_token_strs"];
        foreach (var p in b.EnumerateObject())
        {
            if (!fields.Contains(p.Name)) throw Unrecognized(p.Name);
        }
        CheckModel(b, o);
        tokenStrs = Bool(b, "return_token_strs");
        var tokenizer = Tokenizer(engine.Session.Tokenizer, chat ? "messages" : "prompt");
        if (chat)
        {
            string text = ChatTemplate.Render(Messages(b));
            if (b.TryGetProperty("add_generation_prompt", out var agp) && agp.ValueKind == JsonValueKind.False) text = text[..^"Assistant:".Length];
            return tokenizer.Encode(text);
        }
        string prompt = Str(b, "prompt") ?? throw new ApiError(400, "you must provide a prompt (a string) or messages", "prompt");
        bool special = !b.TryGetProperty("add_special_tokens", out var ast) || ast.ValueKind != JsonValueKind.False; // vLLM's default: true
        return tokenizer.Encode(prompt, special);
    }

    /// <summary>vLLM's /detokenize body: {"tokens": [ids]}; returns the text.</summary>
    public static string Detokenize(JsonElement b, ServingEngine engine, ServerOptions o)
    {
        foreach (var p in b.EnumerateObject())
        {
            if (p.Name is not ("model" or "tokens")) throw Unrecognized(p.Name);
        }
        CheckModel(b, o);
        var tokenizer = Tokenizer(engine.Session.Tokenizer, "tokens");
        if (!b.TryGetProperty("tokens", out var t) || t.ValueKind != JsonValueKind.Array) throw new ApiError(400, "'tokens' must be an array of token ids.", "tokens");
        int count = tokenizer.Count;
        var ids = t.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out int id) && id >= 0 && id < count ? id
            : throw new ApiError(400, $"'tokens': {x.GetRawText()} is not a token id of the tokenizer [0, {count}).", "tokens")).ToArray();
        return tokenizer.Decode(ids);
    }

    private static void CheckModel(JsonElement b, ServerOptions o)
    {
        if (Str(b, "model") is { } model && model != o.ModelId)
        {
            throw new ApiError(404, $"The model '{model}' does not exist; this server serves '{o.ModelId}'.", "model", "invalid_request_error", "model_not_found");
        }
    }

    private static HfTokenizer Tokenizer(HfTokenizer? tokenizer, string param, string instead = "use token ids") =>
        tokenizer ?? throw new ApiError(400, $"this model has no tokenizer; '{param}' needs one ({instead}).", param);

    public static ApiError Unrecognized(string name, string? param = null) =>
        new(400, $"Unrecognized request argument supplied: {name}", param ?? name);

    private static string Fmt(double v) => v.ToString(CultureInfo.InvariantCulture);

    private static bool Bool(JsonElement e, string name, string? param = null)
    {
        if (!e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return false;
        return v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean()
            : throw new ApiError(400, $"'{param ?? name}' must be a boolean; found {v.GetRawText()}.", param ?? name);
    }

    private static string? Str(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) ? v.ValueKind == JsonValueKind.String ? v.GetString() : v.ValueKind == JsonValueKind.Null ? null
            : throw new ApiError(400, $"'{name}' must be a string; found {v.ValueKind}.", name) : null;

    private static int? Int(JsonElement e, string name)
    {
        if (!e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long l)) return l > int.MaxValue ? int.MaxValue : l < int.MinValue ? int.MinValue : (int)l;
        throw new ApiError(400, $"'{name}' must be an integer; found {v.GetRawText()}.", name);
    }

    private static double? Num(JsonElement e, string name)
    {
        if (!e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        // TryGetDouble: a number beyond double's range (1e999) is a 400, where GetDouble would throw
        if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d)) return d;
        throw new ApiError(400, $"'{name}' must be a number{(v.ValueKind == JsonValueKind.Number ? " within double's range" : "")}; found {v.GetRawText()}.", name);
    }
}
