using XLstmOnnx.Contract;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Runtime.Serving;

/// <summary>
/// Recurrent states after token prefixes (a system prompt, a chat history, a repeated prompt), kept in the model's
/// device memory, so that a request starting with a cached prefix begins from its state instead of reading it again: a
/// hit costs one device copy of a row (a recurrent state has a fixed size whatever the prefix length), never a trip over
/// PCIe. Each entry also keeps the logits and next_token after its last token, so a request whose whole prompt is cached
/// needs no model call before its first token. Entries live in a fixed slab of rows (no allocation per entry); the least
/// recently used one is replaced. Not thread-safe (the engine's loop owns it). Owns its device memory.
/// </summary>
internal sealed class PrefixCache : IDisposable
{
    private sealed class Entry(int[] tokens, int slot)
    {
        public int[] Tokens { get; } = tokens;
        public int Slot { get; } = slot;
    }

    private readonly LinkedList<Entry> _lru = new(); // most recent first
    private readonly Stack<int> _free = new();
    private readonly DeviceMemory _memory;
    private readonly DeviceAllocation? _logits, _next;
    private readonly long _vocab;

    /// <param name="manifest">The model.</param>
    /// <param name="memory">Its device memory.</param>
    /// <param name="entries">How many states fit (0 turns the cache off).</param>
    public PrefixCache(ModelManifest manifest, DeviceMemory memory, int entries)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(entries);
        _memory = memory;
        _vocab = manifest.VocabSize;
        Capacity = entries;
        if (entries == 0) return;
        try
        {
            States = new StatePool(manifest, memory, entries, 1, $"the prefix cache ({entries} states)");
            _logits = memory.Allocate(entries * _vocab * 4, "the prefix cache's logits");
            _next = memory.Allocate(entries * 8L, "the prefix cache's next tokens");
        }
        catch
        {
            Dispose();
            throw;
        }
        for (int s = entries - 1; s >= 0; s--) _free.Push(s);
    }

    /// <summary>Entries the cache holds at most.</summary>
    public int Capacity { get; }

    /// <summary>The entries' states (one set), row = slot; null when the cache is off.</summary>
    public StatePool? States { get; }

    public int Count => _lru.Count;
    public long Bytes => (long)Count * (States?.RowBytes ?? 0);
    public long Hits { get; private set; }
    public long Misses { get; private set; }

    public IntPtr LogitsAt(int slot) => _logits!.Address + (nint)(slot * _vocab * 4);
    public IntPtr NextAt(int slot) => _next!.Address + slot * 8;

    /// <summary>The longest cached prefix of <paramref name="prompt"/> (the whole prompt included) and its slot, or null; counts a hit or a miss.</summary>
    public (int Length, int Slot)? Lookup(ReadOnlySpan<int> prompt)
    {
        var best = Longest(prompt);
        if (best is null)
        {
            Misses++;
            return null;
        }
        Hits++;
        _lru.Remove(best);
        _lru.AddFirst(best);
        return (best.Value.Tokens.Length, best.Value.Slot);
    }

    /// <summary>The longest cached prefix of <paramref name="prompt"/> and its slot, or null, without counting or reordering (a hand-off's export).</summary>
    public (int Length, int Slot)? Peek(ReadOnlySpan<int> prompt) => Longest(prompt) is { } n ? (n.Value.Tokens.Length, n.Value.Slot) : null;

    private LinkedListNode<Entry>? Longest(ReadOnlySpan<int> prompt)
    {
        if (Capacity == 0) return null;
        LinkedListNode<Entry>? best = null;
        for (var n = _lru.First; n is not null; n = n.Next)
        {
            var t = n.Value.Tokens;
            if (t.Length <= prompt.Length && (best is null || t.Length > best.Value.Tokens.Length) && prompt[..t.Length].SequenceEqual(t)) best = n;
        }
        return best;
    }

    /// <summary>
    /// A slot to store the state after <paramref name="tokens"/> in (the least recently used entry makes way), or null
    /// when the cache is off or already holds these tokens. The caller fills the slot's state, logits and next token.
    /// </summary>
    public int? Reserve(int[] tokens)
    {
        if (Capacity == 0) return null;
        for (var n = _lru.First; n is not null; n = n.Next)
        {
            if (n.Value.Tokens.AsSpan().SequenceEqual(tokens)) return null;
        }
        if (_free.Count == 0)
        {
            var last = _lru.Last!;
            _lru.RemoveLast();
            _free.Push(last.Value.Slot);
        }
        int slot = _free.Pop();
        _lru.AddFirst(new Entry(tokens, slot));
        return slot;
    }

    public void Dispose()
    {
        States?.Dispose();
        _logits?.Dispose();
        _next?.Dispose();
    }
}
