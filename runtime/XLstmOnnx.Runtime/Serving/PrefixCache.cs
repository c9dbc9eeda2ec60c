using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Runtime.Serving;

/// <summary>
/// Recurrent states after token prefixes (a system prompt, a chat history), so that a request starting with a cached
/// prefix begins from its state instead of reading it again. A recurrent state has a fixed size whatever the prefix
/// length, which makes this cheap. Bounded in bytes; least recently used entries go first. Not thread-safe (the
/// engine's loop owns it).
/// </summary>
public sealed class PrefixCache(long maxBytes)
{
    private sealed record Entry(int[] Tokens, Generator.RowState State);

    private readonly LinkedList<Entry> _lru = new(); // most recent first
    public long Bytes { get; private set; }
    public int Count => _lru.Count;
    public long Hits { get; private set; }
    public long Misses { get; private set; }

    /// <summary>The longest cached prefix of <paramref name="prompt"/> (whole prompt included), or null; counts a hit or a miss.</summary>
    public (int Length, Generator.RowState State)? Lookup(ReadOnlySpan<int> prompt)
    {
        LinkedListNode<Entry>? best = null;
        for (var n = _lru.First; n is not null; n = n.Next)
        {
            var t = n.Value.Tokens;
            if (t.Length <= prompt.Length && (best is null || t.Length > best.Value.Tokens.Length) && prompt[..t.Length].SequenceEqual(t)) best = n;
        }
        if (best is null)
        {
            Misses++;
            return null;
        }
        Hits++;
        _lru.Remove(best);
        _lru.AddFirst(best);
        return (best.Value.Tokens.Length, best.Value.State);
    }

    /// <summary>Caches the state after <paramref name="tokens"/>, evicting the least recently used entries to stay in budget.</summary>
    public void Add(int[] tokens, Generator.RowState state)
    {
        if (maxBytes <= 0 || state.Bytes > maxBytes) return;
        for (var n = _lru.First; n is not null; n = n.Next)
        {
            if (n.Value.Tokens.AsSpan().SequenceEqual(tokens)) return; // already there
        }
        while (Bytes + state.Bytes > maxBytes && _lru.Last is { } last)
        {
            Bytes -= last.Value.State.Bytes;
            _lru.RemoveLast();
        }
        _lru.AddFirst(new Entry(tokens, state));
        Bytes += state.Bytes;
    }
}
