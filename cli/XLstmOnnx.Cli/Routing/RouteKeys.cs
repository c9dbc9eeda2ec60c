using System.Text;
using System.Text.Json;

namespace XLstmOnnx.Cli.Routing;

/// <summary>
/// What the router reads from a request to choose a replica (docs/routing.md, "Choosing a replica"): the conversation
/// key (the <see cref="SessionHeader"/> header, else the OpenAI <c>user</c> field) and the hashes of the prompt's
/// leading blocks: blocks of <see cref="RouterOptions.PrefixBlockTokens"/> ids for a token-id prompt, of
/// <see cref="RouterOptions.PrefixBlockChars"/> characters for text and chat transcripts, each hash covering all the
/// blocks before it too. Only whole blocks count: two prompts that share k whole blocks share k hashes.
/// </summary>
/// <param name="PromptTokens">
/// The prompt's length in tokens: exact for token ids, estimated for text and chat transcripts (a token per
/// <see cref="CharsPerToken"/> characters); the router hands a moving conversation's state over only above
/// <see cref="RouterOptions.HandOffMinTokens"/>.
/// </param>
internal sealed record RouteKeys(string? Session, ulong[] Prefixes, int PromptTokens = 0)
{
    /// <summary>Characters a token, for the estimate of a text prompt's length (about 4 for English with GPT-style BPE vocabularies).</summary>
    public const int CharsPerToken = 4;

    /// <summary>The request header that names a conversation (it wins over the body's <c>user</c>).</summary>
    public const string SessionHeader = "X-Session-Id";

    /// <summary>Where the router keeps a request's keys for the routing policy.</summary>
    public static readonly object Item = new();

    public static readonly RouteKeys None = new(null, []);

    /// <summary>The keys of a JSON request body (completions or chat); a body that is not JSON has only the header's key.</summary>
    public static RouteKeys Read(ReadOnlySpan<byte> body, string? sessionHeader, RouterOptions options)
    {
        string? session = string.IsNullOrEmpty(sessionHeader) ? null : sessionHeader;
        try
        {
            using var doc = JsonDocument.Parse(body.ToArray());
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) return new(session, []);
            if (session is null && root.TryGetProperty("user", out var user) && user.ValueKind == JsonValueKind.String && user.GetString() is { Length: > 0 } u) session = u;
            if (root.TryGetProperty("messages", out var messages))
            {
                string transcript = Transcript(messages);
                return new(session, TextBlocks(transcript, options.PrefixBlockChars), transcript.Length / CharsPerToken);
            }
            return root.TryGetProperty("prompt", out var prompt) ? new(session, PromptBlocks(prompt, options), CountTokens(prompt)) : new(session, []);
        }
        catch (JsonException)
        {
            return new(session, []); // the replica answers the bad body with its own 400
        }
    }

    private static ulong[] PromptBlocks(JsonElement prompt, RouterOptions options)
    {
        switch (prompt.ValueKind)
        {
            case JsonValueKind.String:
                return TextBlocks(prompt.GetString() ?? "", options.PrefixBlockChars);
            case JsonValueKind.Array when prompt.GetArrayLength() > 0:
                var first = prompt[0];
                if (first.ValueKind == JsonValueKind.String) return TextBlocks(first.GetString() ?? "", options.PrefixBlockChars);
                if (first.ValueKind == JsonValueKind.Number) return IdBlocks(prompt, options.PrefixBlockTokens);
                if (first.ValueKind == JsonValueKind.Array) return IdBlocks(first, options.PrefixBlockTokens); // a batch: its first prompt
                return [];
            default:
                return [];
        }
    }

    /// <summary>A completion prompt's tokens: ids counted, text estimated; of a batch, its first prompt.</summary>
    private static int CountTokens(JsonElement prompt) => prompt.ValueKind switch
    {
        JsonValueKind.String => (prompt.GetString() ?? "").Length / CharsPerToken,
        JsonValueKind.Array when prompt.GetArrayLength() > 0 => prompt[0].ValueKind switch
        {
            JsonValueKind.Number => prompt.GetArrayLength(),
            JsonValueKind.String => (prompt[0].GetString() ?? "").Length / CharsPerToken,
            JsonValueKind.Array => prompt[0].GetArrayLength(),
            _ => 0,
        },
        _ => 0,
    };

    /// <summary>A chat transcript as one string: each message's role and text, in order, with separators no text holds.</summary>
    private static string Transcript(JsonElement messages)
    {
        if (messages.ValueKind != JsonValueKind.Array) return "";
        var sb = new StringBuilder();
        foreach (var m in messages.EnumerateArray())
        {
            if (m.ValueKind != JsonValueKind.Object) continue;
            if (m.TryGetProperty("role", out var role)) sb.Append(role.ToString());
            sb.Append('\u0001');
            if (m.TryGetProperty("content", out var content))
            {
                if (content.ValueKind == JsonValueKind.String) sb.Append(content.GetString());
                else if (content.ValueKind == JsonValueKind.Array)
                {
                    foreach (var part in content.EnumerateArray())
                        if (part.ValueKind == JsonValueKind.Object && part.TryGetProperty("text", out var t)) sb.Append(t.ToString());
                }
            }
            sb.Append('\u0002');
        }
        return sb.ToString();
    }

    private static ulong[] TextBlocks(string text, int block)
    {
        var hashes = new ulong[text.Length / block];
        ulong h = Fnv.Offset;
        for (int k = 0; k < hashes.Length; k++)
        {
            foreach (char c in text.AsSpan(k * block, block)) h = Fnv.Add(h, c);
            hashes[k] = h;
        }
        return hashes;
    }

    private static ulong[] IdBlocks(JsonElement ids, int block)
    {
        int n = ids.GetArrayLength();
        var hashes = new ulong[n / block];
        ulong h = Fnv.Offset ^ 0x1d; // ids and text never share a hash chain
        int i = 0;
        foreach (var id in ids.EnumerateArray())
        {
            if (i / block >= hashes.Length) break;
            h = Fnv.Add(h, id.TryGetInt64(out long v) ? (ulong)v : 0UL);
            if (++i % block == 0) hashes[i / block - 1] = h;
        }
        return hashes;
    }

    /// <summary>FNV-1a, 64 bits, fed 64-bit values a byte at a time.</summary>
    private static class Fnv
    {
        public const ulong Offset = 14695981039346656037UL;
        private const ulong Prime = 1099511628211UL;

        public static ulong Add(ulong h, ulong value)
        {
            for (int b = 0; b < 8; b++)
            {
                h = (h ^ (value & 0xff)) * Prime;
                value >>= 8;
            }
            return h;
        }
    }
}
