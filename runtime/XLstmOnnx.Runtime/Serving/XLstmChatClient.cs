using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Runtime.Serving;

/// <summary>
/// <see cref="IChatClient"/> (Microsoft.Extensions.AI) over a <see cref="ServingEngine"/>: .NET applications get xLSTM
/// chat, streaming included, with the engine's continuous batching and prefix-state cache. The engine is not owned.
/// </summary>
public sealed class XLstmChatClient(ServingEngine engine, string modelId) : IChatClient
{
    private readonly ChatClientMetadata _metadata = new("xlstm-onnx", null, modelId);

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var text = new System.Text.StringBuilder();
        ChatFinishReason? finish = null;
        int tokens = 0;
        await foreach (var e in Run(messages, options, cancellationToken).ConfigureAwait(false))
        {
            text.Append(e.Text);
            tokens++;
            if (e.Finish != StopReason.None) finish = Reason(e.Finish);
        }
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, text.ToString().TrimStart()))
        {
            ModelId = modelId,
            FinishReason = finish,
            Usage = new UsageDetails { OutputTokenCount = tokens },
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        await foreach (var e in Run(messages, options, cancellationToken).ConfigureAwait(false))
        {
            yield return new ChatResponseUpdate(ChatRole.Assistant, e.Text)
            {
                ModelId = modelId,
                FinishReason = e.Finish == StopReason.None ? null : Reason(e.Finish),
            };
        }
    }

    private IAsyncEnumerable<CompletionEvent> Run(IEnumerable<ChatMessage> messages, ChatOptions? options, CancellationToken cancel)
    {
        var tokenizer = engine.Session.Tokenizer ?? throw new XLstmOnnxException($"{engine.Session.Directory}: chat needs tokenizer.json.");
        var list = messages.Select(m => (m.Role.Value, m.Text)).ToList();
        if (options?.Instructions is { Length: > 0 } instructions) list.Insert(0, ("system", instructions));
        var prompt = tokenizer.Encode(ChatTemplate.Render(list));
        var o = new GenerationOptions
        {
            MaxNewTokens = options?.MaxOutputTokens ?? 256,
            Greedy = options?.Temperature is 0,
            Temperature = options?.Temperature is > 0 and var t ? t : 1.0,
            TopP = options?.TopP ?? 1.0,
            TopK = options?.TopK ?? 0,
            Seed = options?.Seed is { } seed ? (ulong)seed : 0,
            StopStrings = [ChatTemplate.StopString, .. options?.StopSequences ?? []],
        };
        return engine.Submit(prompt, o, cancel).ReadAllAsync(cancel);
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
