namespace XLstmOnnx.Cli.Routing;

/// <summary>
/// What the router remembers of where it sent what: conversation (session) keys and prompt-prefix hashes, each mapped
/// to the replica that last served it, both bounded (least recently used entries go first). The replicas' prefix caches
/// hold the states; this table only says which replica is likely to hold one (docs/routing.md, "Choosing a replica").
/// Thread-safe.
/// </summary>
internal sealed class RoutingTable(int capacity)
{
    private readonly Lru<string> _sessions = new(capacity);
    private readonly Lru<ulong> _prefixes = new(capacity);

    public int Capacity { get; } = capacity;

    /// <summary>The replica that last served <paramref name="session"/>, or null.</summary>
    public string? Session(string session) => _sessions.Get(session);

    public void SetSession(string session, string replica) => _sessions.Set(session, replica);

    /// <summary>
    /// The replica that served the longest of <paramref name="prefixes"/> (hashes of a prompt's first 1, 2, … blocks)
    /// among those <paramref name="usable"/> accepts, or null.
    /// </summary>
    public string? LongestPrefix(IReadOnlyList<ulong> prefixes, Func<string, bool> usable)
    {
        for (int k = prefixes.Count - 1; k >= 0; k--)
        {
            if (_prefixes.Get(prefixes[k]) is { } replica && usable(replica)) return replica;
        }
        return null;
    }

    public void SetPrefixes(IReadOnlyList<ulong> prefixes, string replica)
    {
        foreach (var h in prefixes) _prefixes.Set(h, replica);
    }

    /// <summary>Entries held: sessions and prefix hashes.</summary>
    public (int Sessions, int Prefixes) Count => (_sessions.Count, _prefixes.Count);

    /// <summary>A bounded map that forgets its least recently used key first.</summary>
    private sealed class Lru<TKey>(int capacity) where TKey : notnull
    {
        private readonly Dictionary<TKey, LinkedListNode<(TKey Key, string Value)>> _map = [];
        private readonly LinkedList<(TKey Key, string Value)> _order = new(); // most recent first
        private readonly Lock _lock = new();

        public int Count { get { lock (_lock) return _map.Count; } }

        public string? Get(TKey key)
        {
            lock (_lock)
            {
                if (!_map.TryGetValue(key, out var node)) return null;
                _order.Remove(node);
                _order.AddFirst(node);
                return node.Value.Value;
            }
        }

        public void Set(TKey key, string value)
        {
            lock (_lock)
            {
                if (_map.TryGetValue(key, out var node))
                {
                    _order.Remove(node);
                    node.Value = (key, value);
                    _order.AddFirst(node);
                    return;
                }
                _map[key] = _order.AddFirst((key, value));
                if (_map.Count > capacity)
                {
                    var last = _order.Last!;
                    _order.RemoveLast();
                    _map.Remove(last.Value.Key);
                }
            }
        }
    }
}
