using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Runtime.Serving;

/// <summary>
/// <see cref="IChatClient"/> (Microsoft.Extensions.AI) over a <see cref="ServingEngine"/>: .NET applications get xLSTM
/// chat, streaming included, with the engine's continuous batching and prefix-state cache. The engine is not owned.
/// Decoding starts from the model's <see cref="GenerationDefaults"/> (generation_config.json); <see cref="ChatOptions"/>
/// overrides them (a <see cref="ChatOptions.Temperature"/> of 0 is greedy, above 0 samples). Without
/// <see cref="ChatOptions.Seed"/> the seed is random; the one used is in the response's (or the first update's)
/// <see cref="ChatResponse.AdditionalProperties"/> under <see cref="SeedProperty"/>. The reply text is the server's:
/// one leading space dropped (<see cref="ChatReply"/>).
/// </summary>
public sealed class XLstmChatClient(ServingEngine engine, string modelId) : IChatClient
{
    /// <summary>The key of the seed used in AdditionalProperties (a long: pass it as <see cref="ChatOptions.Seed"/> to repeat).</summary>
    public const string SeedProperty = "seed";

    private readonly ChatClientMetadata _metadata = new("xlstm-onnx", null, modelId);

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var text = new System.Text.StringBuilder();
        ChatFinishReason? finish = null;
        int tokens = 0;
        var (events, prompt, seed) = Run(messages, options, cancellationToken);
        var reply = new ChatReply();
        await foreach (var e in events.ConfigureAwait(false))
        {
            text.Append(reply.Next(e.Text));
            tokens++;
            if (e.Finish != StopReason.None) finish = Reason(e.Finish);
        }
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, text.ToString()))
        {
            ModelId = modelId,
            FinishReason = finish,
            Usage = new UsageDetails { InputTokenCount = prompt, OutputTokenCount = tokens, TotalTokenCount = prompt + tokens },
            AdditionalProperties = new() { [SeedProperty] = seed },
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (events, prompt, seed) = Run(messages, options, cancellationToken);
        var reply = new ChatReply();
        bool first = true;
        int tokens = 0;
        await foreach (var e in events.ConfigureAwait(false))
        {
            tokens++;
            var update = new ChatResponseUpdate(ChatRole.Assistant, reply.Next(e.Text))
            {
                ModelId = modelId,
                FinishReason = e.Finish == StopReason.None ? null : Reason(e.Finish),
            };
            if (first) update.AdditionalProperties = new() { [SeedProperty] = seed };
            if (e.Finish != StopReason.None)
            {
                update.Contents.Add(new UsageContent(new UsageDetails { InputTokenCount = prompt, OutputTokenCount = tokens, TotalTokenCount = prompt + tokens }));
            }
            first = false;
            yield return update;
        }
    }

    private (IAsyncEnumerable<CompletionEvent> Events, int PromptTokens, long Seed) Run(IEnumerable<ChatMessage> messages, ChatOptions? options, CancellationToken cancel)
    {
        var tokenizer = engine.Session.Tokenizer ?? throw new XLstmOnnxException($"{engine.Session.Directory}: chat needs tokenizer.json.");
        var list = messages.Select(m => (m.Role.Value, m.Text)).ToList();
        if (options?.Instructions is { Length: > 0 } instructions) list.Insert(0, ("system", instructions));
        var prompt = tokenizer.Encode(ChatTemplate.Render(list));
        long seed = options?.Seed ?? Random.Shared.NextInt64();
        var o = engine.Session.GenerationDefaults.Options(256);
        if (options?.MaxOutputTokens is { } max) o = o with { MaxNewTokens = max };
        if (options?.Temperature is { } t) o = t == 0 ? o with { Greedy = true } : o with { Greedy = false, Temperature = t };
        if (options?.TopP is { } p) o = o with { TopP = p };
        if (options?.TopK is { } k) o = o with { TopK = k };
        if (options?.PresencePenalty is { } presence) o = o with { PresencePenalty = presence };
        if (options?.FrequencyPenalty is { } frequency) o = o with { FrequencyPenalty = frequency };
        o = o with
        {
            Seed = unchecked((ulong)seed),
            StopStrings = [ChatTemplate.StopString, .. options?.StopSequences ?? []],
        };
        return (engine.Submit(prompt, o, cancel).ReadAllAsync(cancel), prompt.Length, seed);
    }

    private static ChatFinishReason Reason(StopReason r) => r == StopReason.MaxNewTokens ? ChatFinishReason.Length : ChatFinishReason.Stop;

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(ChatClientMetadata) ? _metadata
        : serviceType.IsInstanceOfType(this) ? this
        : serviceType.IsInstanceOfType(engine) ? engine
        : null;

    public void Dispose()
    {
        // the engine belongs to the caller
    }
}
