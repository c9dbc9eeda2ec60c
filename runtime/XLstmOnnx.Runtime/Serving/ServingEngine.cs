using System.Diagnostics;
using System.Text;
using System.Threading.Channels;
using XLstmOnnx.Runtime.Generation;
using XLstmOnnx.Runtime.Tokenization;

namespace XLstmOnnx.Runtime.Serving;

/// <summary>Limits and sizes of a serving engine.</summary>
public sealed record ServingOptions
{
    /// <summary>Slots in the batched state: sequences decoded together.</summary>
    public int MaxBatch { get; init; } = 8;
    /// <summary>Requests waiting for a slot; more are refused (HTTP 429).</summary>
    public int QueueCapacity { get; init; } = 64;
    /// <summary>Budget of the prefix-state cache in bytes (0 turns it off).</summary>
    public long PrefixCacheBytes { get; init; } = 256L << 20;
    /// <summary>Prompts shorter than this are not cached (their prefill is cheaper than a state copy).</summary>
    public int PrefixCacheMinTokens { get; init; } = 8;
}

/// <summary>One streamed piece of a completion: a token, the text it completes (may be empty), and the end.</summary>
public readonly record struct CompletionEvent(int Token, string Text, StopReason Finish);

/// <summary>Refused because the queue is full.</summary>
public sealed class QueueFullException(int capacity) : Exception($"the request queue is full ({capacity} waiting); retry later");

/// <summary>
/// Continuous batching over one model: every live sequence owns a slot (a row of the batched recurrent state). Between
/// decode steps, waiting requests take free slots: their rows are reset (or set from the prefix cache) and their prompts
/// prefilled in one masked call that leaves the other rows untouched; then all live sequences step together. A request
/// whose client goes away is dropped at the next step. One loop thread owns the model; Submit is thread-safe.
/// </summary>
public sealed class ServingEngine : IDisposable
{
    private sealed class Slot
    {
        public required Request Request;
        public required Sampler Sampler;
        public TextStopper? Text;
        public int Generated;
        public int LastToken;
        public HashSet<int> Stops = [];
    }

    private sealed record Request(int[] Prompt, GenerationOptions Options, Channel<CompletionEvent> Events, CancellationToken Cancel, long Enqueued);

    private readonly XLstmSession _session;
    private readonly ServingOptions _o;
    private readonly Generator _gen;
    private readonly HfTokenizer? _tokenizer;
    private readonly Channel<Request> _queue;
    private readonly Slot?[] _slots;
    private readonly PrefixCache _cache;
    private readonly Thread _loop;
    private readonly CancellationTokenSource _stop = new();
    private readonly object _metricsLock = new();
    private int _queued;
    private volatile Exception? _failure;

    public ServingEngine(XLstmSession session, ServingOptions? options = null)
    {
        _session = session;
        _o = options ?? new ServingOptions();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(_o.MaxBatch);
        _gen = new Generator(session, _o.MaxBatch);
        _tokenizer = session.Tokenizer;
        _queue = Channel.CreateBounded<Request>(new BoundedChannelOptions(Math.Max(1, _o.QueueCapacity)) { SingleReader = true });
        _slots = new Slot?[_o.MaxBatch];
        _cache = new PrefixCache(_o.PrefixCacheBytes);
        _loop = new Thread(Loop) { IsBackground = true, Name = "xlstm-serving" };
        _loop.Start();
    }

    public XLstmSession Session => _session;
    public ServingOptions Options => _o;
    public ServingMetrics Metrics { get; } = new();

    /// <summary>
    /// Queues a completion; events arrive on the returned reader until one with a Finish reason, then it completes.
    /// Cancelling <paramref name="cancel"/> (a client that went away) frees the slot at the next step.
    /// </summary>
    /// <exception cref="QueueFullException">The queue is full.</exception>
    public ChannelReader<CompletionEvent> Submit(int[] prompt, GenerationOptions options, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        options.Validate();
        if (prompt.Length == 0) throw new XLstmOnnxException("prompt: at least one token is needed.");
        if (_failure is not null) throw new XLstmOnnxException($"the serving engine stopped after an error: {_failure.Message}", _failure);
        if (options.StopStrings.Count > 0 && _tokenizer is null) throw new XLstmOnnxException("stop strings need the model's tokenizer.json.");
        var events = Channel.CreateUnbounded<CompletionEvent>(new UnboundedChannelOptions { SingleWriter = true });
        var request = new Request(prompt, options, events, cancel, Stopwatch.GetTimestamp());
        if (!_queue.Writer.TryWrite(request))
        {
            Metrics.Rejected();
            throw new QueueFullException(_o.QueueCapacity);
        }
        Interlocked.Increment(ref _queued);
        Metrics.QueueDepth = Volatile.Read(ref _queued);
        return events.Reader;
    }

    private void Loop()
    {
        try
        {
            _gen.Reset();
            while (!_stop.IsCancellationRequested)
            {
                DropCancelled();
                Admit();
                if (_slots.All(s => s is null))
                {
                    try
                    {
                        _queue.Reader.WaitToReadAsync(_stop.Token).AsTask().Wait();
                    }
                    catch (AggregateException) when (_stop.IsCancellationRequested)
                    {
                        break;
                    }
                    continue;
                }
                Step();
            }
        }
        catch (Exception e)
        {
            // a failure of the model is fatal for every live request: say so to each of them, and refuse new ones
            _failure = e;
            foreach (var s in _slots) s?.Request.Events.Writer.TryComplete(e);
            while (_queue.Reader.TryRead(out var r)) r.Events.Writer.TryComplete(e);
        }
    }

    /// <summary>Requests waiting in the queue take free slots; their prompts are prefilled together, masked from the others.</summary>
    private void Admit()
    {
        var rows = new IReadOnlyList<int>[_slots.Length];
        for (int r = 0; r < rows.Length; r++) rows[r] = [];
        var admitted = new List<(int Row, bool Exact)>();
        for (int r = 0; r < _slots.Length; r++)
        {
            if (_slots[r] is not null) continue;
            Request? req = null;
            while (_queue.Reader.TryRead(out var q))
            {
                Interlocked.Decrement(ref _queued);
                if (q.Cancel.IsCancellationRequested)
                {
                    q.Events.Writer.TryComplete();
                    Metrics.Finished(cancelled: true);
                    continue;
                }
                req = q;
                break;
            }
            if (req is null) break;
            var hit = _cache.Lookup(req.Prompt);
            if (hit is { } h)
            {
                _gen.WriteRow(r, h.State);
                rows[r] = req.Prompt[h.Length..];
            }
            else
            {
                _gen.ResetRow(r);
                rows[r] = req.Prompt;
            }
            _slots[r] = NewSlot(req);
            admitted.Add((r, hit is { } x && x.Length == req.Prompt.Length));
        }
        Metrics.QueueDepth = Volatile.Read(ref _queued);
        Metrics.CacheHits = _cache.Hits;
        Metrics.CacheMisses = _cache.Misses;
        if (admitted.Count == 0) return;
        _gen.Append(rows);
        foreach (var (r, exact) in admitted)
        {
            var slot = _slots[r]!;
            if (!exact && slot.Request.Prompt.Length >= _o.PrefixCacheMinTokens) _cache.Add(slot.Request.Prompt, _gen.ReadRow(r));
            Metrics.PromptTokens(slot.Request.Prompt.Length);
            Choose(r, firstToken: true);
        }
        Metrics.CacheBytes = _cache.Bytes;
        Metrics.CacheEntries = _cache.Count;
    }

    private Slot NewSlot(Request req)
    {
        int vocab = (int)Math.Min(_session.Manifest.VocabSize, _tokenizer?.Count ?? _session.Manifest.VocabSize);
        var slot = new Slot { Request = req, Sampler = new Sampler(req.Options, vocab) };
        foreach (int t in req.Prompt) slot.Sampler.Observe(t);
        foreach (int t in req.Options.StopTokenIds) slot.Stops.Add(t);
        if (!req.Options.IgnoreEos && _session.Manifest.EosTokenId is { } eos) slot.Stops.Add((int)eos);
        if (_tokenizer is not null) slot.Text = new TextStopper(_tokenizer, req.Options.StopStrings); // no <|endoftext|> in the text
        return slot;
    }

    /// <summary>Feeds every live sequence its last token in one call and chooses the next.</summary>
    private void Step()
    {
        var rows = new IReadOnlyList<int>[_slots.Length];
        int live = 0;
        for (int r = 0; r < rows.Length; r++)
        {
            rows[r] = _slots[r] is { } s ? [s.LastToken] : [];
            if (_slots[r] is not null) live++;
        }
        Metrics.Occupancy = live;
        long t0 = Stopwatch.GetTimestamp();
        _gen.Append(rows);
        Metrics.DecodeStep(Stopwatch.GetElapsedTime(t0), live);
        for (int r = 0; r < _slots.Length; r++)
        {
            if (_slots[r] is not null) Choose(r, firstToken: false);
        }
    }

    private void Choose(int r, bool firstToken)
    {
        var s = _slots[r]!;
        int token = s.Sampler.Next(_gen.LastLogits(r));
        s.Sampler.Observe(token);
        s.Generated++;
        s.LastToken = token;
        if (firstToken) Metrics.FirstToken(Stopwatch.GetElapsedTime(s.Request.Enqueued));
        Metrics.CompletionTokens(1);
        string piece = s.Text?.Push(token) ?? "";
        var finish = s.Stops.Contains(token) ? StopReason.StopToken
            : s.Text?.Stopped == true ? StopReason.StopString
            : s.Generated >= s.Request.Options.MaxNewTokens ? StopReason.MaxNewTokens
            : StopReason.None;
        if (finish != StopReason.None && s.Text is not null) piece += s.Text.Finish();
        s.Request.Events.Writer.TryWrite(new CompletionEvent(token, piece, finish));
        if (finish != StopReason.None) Free(r, cancelled: false);
    }

    private void DropCancelled()
    {
        for (int r = 0; r < _slots.Length; r++)
        {
            if (_slots[r] is { } s && s.Request.Cancel.IsCancellationRequested) Free(r, cancelled: true);
        }
    }

    private void Free(int r, bool cancelled)
    {
        _slots[r]!.Request.Events.Writer.TryComplete();
        _slots[r] = null;
        Metrics.Finished(cancelled);
        Metrics.Occupancy = _slots.Count(x => x is not null);
    }

    public void Dispose()
    {
        _stop.Cancel();
        _loop.Join();
        _gen.Dispose();
        _stop.Dispose();
    }
}
