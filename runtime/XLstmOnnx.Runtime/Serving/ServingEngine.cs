using System.Diagnostics;
using System.Threading.Channels;
using XLstmOnnx.Contract;
using XLstmOnnx.Runtime.Generation;
using XLstmOnnx.Runtime.Tokenization;

namespace XLstmOnnx.Runtime.Serving;

/// <summary>Limits and sizes of a serving engine.</summary>
public sealed record ServingOptions
{
    /// <summary>Slots of the decode state pool: sequences decoded together at most.</summary>
    public int MaxBatch { get; init; } = 8;
    /// <summary>Requests waiting for a slot; more are refused (HTTP 429).</summary>
    public int QueueCapacity { get; init; } = 64;
    /// <summary>
    /// Memory for the prefix-state cache in bytes, in the model's device memory; 0 turns it off; null: the default, room
    /// for two states per slot (a shared prefix and a conversation's last turn for every live sequence), at most a quarter
    /// of the GPU memory left after the state pool (on the CPU: at most 1 GiB).
    /// </summary>
    public long? PrefixCacheBytes { get; init; }
    /// <summary>Prompts shorter than this are not cached (their prefill is cheaper than a state copy).</summary>
    public int PrefixCacheMinTokens { get; init; } = 8;
    /// <summary>Prompts being read at the same time (each in its own staging row of state until it joins).</summary>
    public int PrefillRows { get; init; } = 8;
    /// <summary>
    /// With live sequences, short prompts wait up to this many decode steps for others to be read with them in one
    /// call (fewer when they fill <see cref="PrefillRows"/> or the free slots); 0 (the default) reads what is waiting as
    /// soon as there is credit. On the H200 at 32 clients, waiting 2 to 12 steps raised the time to first token from
    /// 118 to 516 ms and throughput by at most 1.5% (tools/serve/README.md).
    /// </summary>
    public int PrefillGatherSteps { get; init; }
    /// <summary>
    /// Longest prompt piece read between two decode steps while sequences are decoding; null: paced by time, so that
    /// prefill takes at most <see cref="PrefillShare"/> of a decode step's time on average (a long prompt is read in
    /// chunks and the live streams keep stepping). Pieces are multiples of the model's chunk_size.
    /// </summary>
    public int? PrefillChunkTokens { get; init; }
    /// <summary>Prefill time allowed per decode step's time, while sequences are decoding (paced mode).</summary>
    public double PrefillShare { get; init; } = 0.9;
    /// <summary>
    /// Batch sizes a decode step may run at: the live sequences are rounded up to the next one (each has its own bindings
    /// and, with CUDA graphs, its own captured graphs). Null: powers of two up to <see cref="MaxBatch"/>, and MaxBatch.
    /// </summary>
    public IReadOnlyList<int>? DecodeBuckets { get; init; }
    /// <summary>
    /// Read prompts inside decode steps through the model's mixed graph (<c>export --mixed-graph</c>): while sequences
    /// decode, each step carries one prompt piece of up to <see cref="PrefillChunkTokens"/> tokens (default: four
    /// chunks), and the weights are streamed once for both. Null: when the model has the mixed graph and runs on CUDA
    /// (on the CPU, where a small model's weights stay in cache, the shipped model served faster with prompts read
    /// between steps: docs/serving.md, "Reading prompts"). True for a model without it is refused. The mixed graph's
    /// session holds its own copy of the weights.
    /// </summary>
    public bool? MixedSteps { get; init; }
    /// <summary>
    /// Pad every prompt reading on the left to whole chunks with masked positions, so the cell reads it in chunks only and
    /// never steps through a recurrent tail (docs/serving.md, "Whole-chunk prompts"): on a GPU a tail of 63 recurrent tokens
    /// costs about what five chunks cost, and the pads ride in GEMMs that stream weights anyway. The schedule then differs from
    /// transformers' (chunks and a recurrent tail) by rounding only; served alone or under load, a request gets the same
    /// schedule. Null: on CUDA (on the CPU a pad costs a token's work). Needs the model's attention_mask.
    /// </summary>
    public bool? PadPrompts { get; init; }
    /// <summary>
    /// Prompts one mixed step reads at most, each in its own row of the prompt lane, when several wait (with whole-chunk
    /// prompts; otherwise one). Default 1: on the H200 at 32 clients, two a step served 0.4% more tokens but raised the
    /// time to first token p50 from 27 to 35 ms, as every step that carries two is longer (tools/serve/README.md, run 7).
    /// </summary>
    public int MixedPromptRows { get; init; } = 1;
    /// <summary>
    /// Tests only: whether prompt pieces inside decode steps take the few fixed shapes of captured mixed calls (null:
    /// exactly when the mixed graph is captured, that is on CUDA with CUDA graphs).
    /// </summary>
    internal bool? FixedPieceShapes { get; init; }
    /// <summary>Run every decode bucket once at start (captures the CUDA graphs before the first request).</summary>
    public bool WarmUp { get; init; } = true;

    /// <summary>The decode buckets in effect, ascending, ending at MaxBatch.</summary>
    public int[] Buckets()
    {
        var b = DecodeBuckets ?? Enumerable.Range(0, 31).Select(i => 1 << i).TakeWhile(x => x < MaxBatch).ToArray();
        if (b.Any(x => x < 1 || x > MaxBatch))
        {
            throw XLstmOnnxException.MustBe(Name(nameof(DecodeBuckets)), $"sizes in [1, {MaxBatch}] ({Name(nameof(MaxBatch))})", string.Join(",", b));
        }
        return [.. b.Append(MaxBatch).Distinct().Order()];
    }

    /// <summary>Checks the options; throws naming the parameter (<c>ServingOptions.MaxBatch</c>), expected and found.</summary>
    public void Validate()
    {
        if (MaxBatch < 1) throw XLstmOnnxException.MustBe(Name(nameof(MaxBatch)), "at least 1", MaxBatch);
        if (PrefillRows < 1) throw XLstmOnnxException.MustBe(Name(nameof(PrefillRows)), "at least 1", PrefillRows);
        if (QueueCapacity < 0) throw XLstmOnnxException.MustBe(Name(nameof(QueueCapacity)), "0 or more", QueueCapacity);
        if (PrefixCacheBytes is < 0) throw XLstmOnnxException.MustBe(Name(nameof(PrefixCacheBytes)), "0 (off), positive or null (the default)", PrefixCacheBytes);
        if (PrefillChunkTokens is < 1) throw XLstmOnnxException.MustBe(Name(nameof(PrefillChunkTokens)), "positive or null (paced)", PrefillChunkTokens);
        if (PrefillGatherSteps < 0) throw XLstmOnnxException.MustBe(Name(nameof(PrefillGatherSteps)), "0 (at once) or more", PrefillGatherSteps);
        if (MixedPromptRows < 1) throw XLstmOnnxException.MustBe(Name(nameof(MixedPromptRows)), "at least 1", MixedPromptRows);
        Buckets();
    }

    /// <summary>The API name of property <paramref name="property"/>, as errors give it: <c>ServingOptions.MaxBatch</c>.</summary>
    public static string Name(string property) => $"{nameof(ServingOptions)}.{property}";
}

/// <summary>
/// One streamed piece of a completion: a token, the text it completes (may be empty), and the end; with
/// <see cref="GenerationOptions.LogProbs"/> the token's log-probability, with <see cref="GenerationOptions.TopLogProbs"/>
/// the most likely tokens at that position (of the model's raw distribution, as the sampler reports them).
/// </summary>
public readonly record struct CompletionEvent(int Token, string Text, StopReason Finish)
{
    /// <summary>The log-probability of <see cref="Token"/>; null when not asked for.</summary>
    public float? LogProb { get; init; }

    /// <summary>The <see cref="GenerationOptions.TopLogProbs"/> most likely tokens, most likely first; null when not asked for.</summary>
    public TokenLogProb[]? TopLogProbs { get; init; }
}

/// <summary>A token and its log-probability.</summary>
public readonly record struct TokenLogProb(int Token, float LogProb);

/// <summary>Refused because the queue is full.</summary>
public sealed class QueueFullException(int capacity) : Exception($"the request queue is full ({capacity} waiting); retry later");

/// <summary>
/// Continuous batching over one model, with the state on the device:
/// <list type="bullet">
/// <item>The live sequences own rows [0, live) of a double-buffered state pool of MaxBatch slots. A decode step runs
/// only those rows, at the next bucket size (pads beyond them are masked); a sequence that ends is replaced by the
/// last row (a device copy), so the live rows stay packed.</item>
/// <item>A new request gets a staging row: its prompt is prefilled there, at batch 1, in pieces between decode steps
/// (paced so that the live streams keep stepping), then its row is copied into the pool. It starts from the longest
/// cached prefix state (a device copy; a fully cached prompt needs no model call at all).</item>
/// <item>Tokens are chosen on the device for the whole batch (<see cref="TokenChooser"/>); only ids come back.</item>
/// </list>
/// One loop thread owns the model and every buffer; <see cref="Submit"/> is thread-safe. A request whose client goes
/// away is dropped at the next iteration.
/// </summary>
public sealed class ServingEngine : IDisposable
{
    private sealed record Request(int[] Prompt, GenerationOptions Options, Channel<CompletionEvent> Events, CancellationToken Cancel, long Enqueued);

    /// <summary>A live sequence: a row of the pool.</summary>
    private sealed class Live(Request request, SequenceDecoder decoder)
    {
        public Request Request { get; } = request;
        public SequenceDecoder Decoder { get; } = decoder;
        public long LastTokenAt;
    }

    /// <summary>A prompt being read into a staging row.</summary>
    private sealed class Job(Request request, int row)
    {
        public Request Request { get; } = request;
        public int Row { get; } = row;
        public int Set;              // the staging pool's set holding the row's state
        public int Start;            // tokens [0, Start) were taken from the prefix cache; the reading is the rest
        public int Lead;             // masked positions the reading starts with (PadPrompts: it is whole chunks)
        public int Position;         // positions of the reading in the state (lead pads, then tokens)
        public bool Fresh;           // its state is zeros not yet written to its row (written where it is first needed)
        /// <summary>Lead pads not yet read.</summary>
        public int Pads => Math.Max(0, Lead - Position);
        /// <summary>Tokens [0, Fed) are in the state.</summary>
        public int Fed => Start + Math.Max(0, Position - Lead);
        /// <summary>Positions of the reading still to read.</summary>
        public int Left => Lead + Request.Prompt.Length - Start - Position;
        public long Since;           // the decode step count when it was admitted
    }

    private readonly XLstmSession _session;
    private readonly ServingOptions _o;
    private readonly HfTokenizer? _tokenizer;
    private readonly Channel<Request> _queue;
    /// <summary>Work the loop runs between steps for other threads (the prefix hand-off): run, or fail when the loop ends.</summary>
    private readonly Channel<(Action Run, Action<Exception> Fail)> _control = Channel.CreateUnbounded<(Action, Action<Exception>)>(new UnboundedChannelOptions { SingleReader = true });
    private readonly DeviceMemory _memory;
    private readonly StatePool _pool, _staging;
    private readonly StatePool? _rider;                  // mixed steps: the rows of the prompts read inside them
    private readonly List<Job> _riders = [];             // the jobs whose states are in rider rows [0, n), in the pool's set _set
    private readonly int _riderRows;                     // prompts a mixed step reads at most
    private readonly StepRunner _runner;
    private readonly TokenChooser _chooser;
    private readonly PrefixCache _cache;
    private readonly int[] _buckets;
    private readonly Live?[] _live;
    private readonly SequenceDecoder?[] _decoders;        // _live[r]?.Decoder, for the chooser
    private readonly int[] _tokens;
    private readonly List<Job> _jobs = [];
    private readonly List<Request> _transit = [];         // out of the queue or the jobs, not yet live: a failure must reach them too
    private readonly Stack<int> _freeStaging = new();
    private readonly long _chunk, _segment;
    private readonly PromptPieces _pieces;
    private readonly bool _mixed;                        // prompt pieces ride in decode steps (the mixed graph)
    private readonly bool _padPrompts;                   // readings start with lead pads to whole chunks
    private readonly Thread _loop;
    private readonly CancellationTokenSource _stop = new();
    private int _count;                                  // live rows
    private long _steps;                                 // decode steps so far
    private int _set;                                    // the pool's set holding the live rows' state
    private int _queued;
    private double _stepSeconds, _prefillTokensPerSecond, _credit;
    private volatile Exception? _failure;

    public ServingEngine(XLstmSession session, ServingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(session);
        _session = session;
        _o = options ?? new ServingOptions();
        _o.Validate();
        _buckets = _o.Buckets();
        var m = session.Manifest;
        var schedule = new Schedule(m.ChunkSize, m.MaxInferenceChunksize); // throws naming a bad setting
        _chunk = schedule.ChunkSize;
        _segment = schedule.SegmentLength;
        _tokenizer = session.Tokenizer;
        _memory = DeviceMemory.For(session.Options);
        bool mixed = _o.MixedSteps ?? (session.HasMixedGraph && session.Options.Device == ExecutionDevice.Cuda);
        if (mixed && !session.HasMixedGraph)
        {
            throw XLstmOnnxException.InParameter(ServingOptions.Name(nameof(ServingOptions.MixedSteps)),
                $"{ServingOptions.Name(nameof(ServingOptions.MixedSteps))} true needs the mixed graph; {session.Directory} has none ({ModelManifest.FileName} field "
                + $"'{ModelManifest.Field(nameof(ModelManifest.MixedModelFile))}' is absent): export with ExportOptions.MixedGraph.");
        }
        if (mixed)
        {
            try
            {
                _ = session.MixedSession; // its weights are on the device before the pool is planned
            }
            catch (XLstmOnnxException e) when (_o.MixedSteps is null)
            {
                // auto: a mixed graph that cannot be opened (no room for its copy of the weights, say) leaves prompts
                // between the steps, and says why
                MixedStepsError = e.Message;
                mixed = false;
            }
        }
        _mixed = mixed;
        if (_o.PadPrompts == true && !m.AttentionMask)
        {
            throw XLstmOnnxException.InParameter(ServingOptions.Name(nameof(ServingOptions.PadPrompts)),
                $"{ServingOptions.Name(nameof(ServingOptions.PadPrompts))} true needs the model's attention_mask; {session.Directory} has none "
                + $"({ModelManifest.FileName} field '{ModelManifest.Field(nameof(ModelManifest.AttentionMask))}' is false): export with ExportOptions.AttentionMask.");
        }
        if (_o.PadPrompts == true && _segment % _chunk != 0)
        {
            throw XLstmOnnxException.InParameter(ServingOptions.Name(nameof(ServingOptions.PadPrompts)),
                $"{ServingOptions.Name(nameof(ServingOptions.PadPrompts))} true needs segments of whole chunks; {session.Directory}'s max_inference_chunksize "
                + $"{_segment} is not a multiple of its chunk_size {_chunk}, so a padded reading would still end its segments in recurrent steps.");
        }
        _padPrompts = _o.PadPrompts ?? (m.AttentionMask && _segment % _chunk == 0 && session.Options.Device == ExecutionDevice.Cuda);
        _pieces = new PromptPieces(_chunk, _segment, _o.PrefillChunkTokens, fixedShapes: _o.FixedPieceShapes ?? session.MixedCaptured, wholeChunks: _padPrompts);
        // pieces of several prompts share one call only when they are whole chunks (extra left pads are whole masked chunks)
        _riderRows = _padPrompts ? Math.Min(_o.MixedPromptRows, _o.PrefillRows) : 1;
        int cacheEntries = CacheEntries(m);
        try
        {
            _pool = new StatePool(m, _memory, _o.MaxBatch, 2, $"the state pool ({ServingOptions.Name(nameof(ServingOptions.MaxBatch))} {_o.MaxBatch})");
            _staging = new StatePool(m, _memory, _o.PrefillRows, 2, $"the prefill rows ({_o.PrefillRows})");
            if (_mixed)
            {
                _rider = new StatePool(m, _memory, _riderRows, 2, $"the prompt rows of mixed steps ({ServingOptions.Name(nameof(ServingOptions.MixedPromptRows))} {_riderRows})");
                for (int set = 0; set < 2; set++) _rider.Zero(set, 0, _riderRows);
            }
            _runner = new StepRunner(session, _memory, _pool, promptRows: _mixed ? _riderRows : 0, promptTokens: _mixed ? _riderRows * _pieces.MaxMixedLength : 0);
            _chooser = new TokenChooser(session, _runner, _memory);
            _cache = new PrefixCache(m, _memory, cacheEntries);
        }
        catch
        {
            DisposeBuffers();
            throw;
        }
        _live = new Live?[_o.MaxBatch];
        _stepsByBatch = new long[_o.MaxBatch + 1];
        _decoders = new SequenceDecoder?[_o.MaxBatch];
        _tokens = new int[_o.MaxBatch];
        for (int r = _o.PrefillRows - 1; r >= 0; r--) _freeStaging.Push(r);
        _queue = Channel.CreateBounded<Request>(new BoundedChannelOptions(Math.Max(1, _o.QueueCapacity)) { SingleReader = true });
        Metrics.CacheCapacity = _cache.Capacity;
        Metrics.Slots = _o.MaxBatch;
        if (_o.WarmUp && session.Options.CudaGraph) WarmUp();
        _loop = new Thread(Loop) { IsBackground = true, Name = "xlstm-serving" };
        _loop.Start();
    }

    public XLstmSession Session => _session;
    public ServingOptions Options => _o;
    /// <summary>Whether prompts are read inside decode steps (<see cref="ServingOptions.MixedSteps"/> resolved for this model).</summary>
    public bool MixedSteps => _mixed;

    /// <summary>
    /// Why the mixed graph was not used though <see cref="ServingOptions.MixedSteps"/> was left to choose and the model has
    /// it (ONNX Runtime could not open it: on a GPU, most likely no room for its copy of the weights); null otherwise.
    /// </summary>
    public string? MixedStepsError { get; private set; }
    /// <summary>Whether prompt readings are padded to whole chunks (<see cref="ServingOptions.PadPrompts"/> resolved for this model).</summary>
    public bool PadPrompts => _padPrompts;

    public ServingMetrics Metrics { get; } = new();

    /// <summary>Entries of the prefix cache: the option, or the default (see <see cref="ServingOptions.PrefixCacheBytes"/>); checks that everything fits.</summary>
    private int CacheEntries(ModelManifest m) => Plan(m, _o, _memory.Available());

    /// <summary>
    /// How many prefix-cache entries the engine keeps for <paramref name="m"/>'s model with <paramref name="o"/>, given
    /// the device's free and total memory (null: host memory, not budgeted); throws naming every size when the state
    /// pool, the prefill rows, the cache and the headroom for activations do not fit.
    /// </summary>
    internal static int Plan(ModelManifest m, ServingOptions o, (long Free, long Total)? device)
    {
        long row = StatePool.RowBytesFor(m);
        long pool = StatePool.BytesFor(m, o.MaxBatch, 2) + StatePool.BytesFor(m, o.PrefillRows, 2) + StatePool.BytesFor(m, 1, 2); // and the rider row
        long buffers = (o.MaxBatch + 1) * m.VocabSize * 4L * 7; // logits, sampler counts and output counts (two sets each), logit bias, cached logits
        long budget = o.PrefixCacheBytes ?? Math.Min(2L * o.MaxBatch * row,
            device is { } a ? Math.Max(0, (a.Free - pool - buffers) / 4) : 1L << 30);
        if (device is { } d)
        {
            // what ONNX Runtime needs beside: activations of a prompt piece and of a decode step, cuBLAS workspaces
            long headroom = Math.Max(2L << 30, d.Total / 20);
            long need = pool + buffers + budget + headroom;
            if (need > d.Free)
            {
                throw new XLstmOnnxException(
                    $"the serving state does not fit in GPU memory: the state pool for {ServingOptions.Name(nameof(o.MaxBatch))} {o.MaxBatch} takes 2 × {o.MaxBatch} × {DeviceMemory.Mib(row)} "
                    + $"and the prefill rows 2 × {o.PrefillRows} × {DeviceMemory.Mib(row)} ({DeviceMemory.Mib(pool)} of {m.StateDtype.JsonName()} state), "
                    + $"the prefix cache {DeviceMemory.Mib(budget)}, buffers {DeviceMemory.Mib(buffers)}, plus {DeviceMemory.Mib(headroom)} for activations: "
                    + $"{DeviceMemory.Mib(need)} in all; {DeviceMemory.Mib(d.Free)} of {DeviceMemory.Mib(d.Total)} are free after the weights. "
                    + $"Lower {ServingOptions.Name(nameof(o.MaxBatch))} or {ServingOptions.Name(nameof(o.PrefixCacheBytes))}.");
            }
        }
        return (int)Math.Min(int.MaxValue, budget / row);
    }

    /// <summary>Decode steps run so far at each batch size (tests and profiles).</summary>
    internal IReadOnlyDictionary<int, long> StepsByBatch =>
        Enumerable.Range(1, _stepsByBatch.Length - 1).Where(b => Volatile.Read(ref _stepsByBatch[b]) > 0).ToDictionary(b => b, b => Volatile.Read(ref _stepsByBatch[b]));

    private long[] _stepsByBatch = [];

    /// <summary>The (length, chunk tokens before the pads) of every piece read inside a decode step so far (tests).</summary>
    internal IReadOnlyCollection<(int Length, int PadsAt)> MixedShapesUsed => _mixedShapes;

    /// <summary>The numbers of prompts above one that a mixed step has read together so far (tests).</summary>
    internal IReadOnlyCollection<int> MixedRowsUsed => _mixedRows;

    private readonly HashSet<int> _mixedRows = [];

    private readonly HashSet<(int Length, int PadsAt)> _mixedShapes = [];

    /// <summary>
    /// Queues a completion; events arrive on the returned reader until one with a Finish reason, then it completes.
    /// Cancelling <paramref name="cancel"/> (a client that went away) frees the slot at the next step.
    /// </summary>
    /// <exception cref="QueueFullException">The queue is full.</exception>
    public ChannelReader<CompletionEvent> Submit(int[] prompt, GenerationOptions options, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate(_session.Manifest.VocabSize);
        if (prompt.Length == 0) throw new XLstmOnnxException("prompt: at least one token is needed.");
        long vocab = _session.Manifest.VocabSize;
        foreach (int t in prompt)
        {
            if (t < 0 || t >= vocab) throw new XLstmOnnxException($"prompt: token id {t} is outside the model's vocabulary [0, {vocab}).");
        }
        foreach (int id in options.LogitBias?.Keys ?? Enumerable.Empty<int>())
        {
            if (id >= vocab) throw XLstmOnnxException.MustBe($"{GenerationOptions.Name(nameof(GenerationOptions.LogitBias))}[{id}]", $"a token id in [0, {vocab})", id);
        }
        if (_failure is not null) throw new XLstmOnnxException($"the serving engine stopped after an error: {_failure.Message}", _failure);
        if (options.StopStrings.Count > 0 && _tokenizer is null) throw new XLstmOnnxException("GenerationOptions.StopStrings needs the model's tokenizer.json.");
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

    /// <summary>
    /// Each bucket's decode step, twice per state set, on masked rows, and with mixed steps each bucket, set, number of prompt rows
    /// and piece shape three times (ONNX Runtime captures a graph id after two plain runs): CUDA graphs are captured before any request.
    /// </summary>
    private void WarmUp()
    {
        long pad = _session.Manifest.PadTokenId ?? 0;
        Array.Fill(_runner.Ids, pad);
        Array.Clear(_runner.Mask);
        foreach (int b in _buckets)
        {
            for (int i = 0; i < 4; i++)
            {
                _runner.Decode(b, _set);
                _set = 1 - _set;
            }
            if (!_mixed) continue;
            for (int rows = 1; rows <= _riderRows; rows++)
            {
                foreach (int shape in _pieces.MixedShapes())
                {
                    var ids = Enumerable.Repeat(pad, rows * shape).ToArray();
                    var mask = new long[rows * shape];
                    for (int i = 0; i < 6; i++)
                    {
                        _runner.DecodeWithPrompt(b, _set, _rider!, _set, 0, rows, ids, mask, shape);
                        _set = 1 - _set;
                    }
                }
            }
        }
    }

    private void Loop()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                while (_control.Reader.TryRead(out var work)) work.Run();
                DropCancelled();
                Admit();
                if (_count == 0 && _jobs.Count == 0)
                {
                    // a request or a piece of control work wakes the loop (waiting on a channel takes nothing from it)
                    Task.WaitAny(_queue.Reader.WaitToReadAsync(_stop.Token).AsTask(), _control.Reader.WaitToReadAsync(_stop.Token).AsTask());
                    if (_stop.IsCancellationRequested) break;
                    continue;
                }
                Prefill();
                if (_count > 0) Step();
            }
        }
        catch (Exception e)
        {
            // a failure of the model is fatal for every live request: say so to each of them, and refuse new ones
            _failure = e;
            for (int r = 0; r < _count; r++) _live[r]?.Request.Events.Writer.TryComplete(e);
            foreach (var j in _jobs) j.Request.Events.Writer.TryComplete(e);
            foreach (var t in _transit) t.Events.Writer.TryComplete(e);
            while (_queue.Reader.TryRead(out var q)) q.Events.Writer.TryComplete(e);
        }
        finally
        {
            _control.Writer.TryComplete();
            var ended = _failure ?? new ObjectDisposedException(nameof(ServingEngine), "the serving engine has stopped");
            while (_control.Reader.TryRead(out var work)) work.Fail(ended);
        }
    }

    /// <summary>Runs <paramref name="work"/> on the engine's loop, between steps (the loop owns the device state).</summary>
    private Task<T> OnLoop<T>(Func<T> work)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        void Run()
        {
            try
            {
                done.TrySetResult(work());
            }
            catch (Exception e)
            {
                done.TrySetException(e);
            }
        }
        if (!_control.Writer.TryWrite((Run, e => done.TrySetException(e))))
            done.TrySetException(_failure ?? new ObjectDisposedException(nameof(ServingEngine), "the serving engine has stopped"));
        return done.Task;
    }

    /// <summary>
    /// The prefix-cache entry for the longest cached prefix of <paramref name="tokens"/>, copied to host memory for another
    /// replica (docs/routing.md, "Handing a state over"), or null when none is cached.
    /// </summary>
    public Task<PrefixHandOff?> ExportPrefixAsync(int[] tokens) => OnLoop(() =>
    {
        if (_cache.Peek(tokens) is not { } hit) return null;
        var logits = new float[_runner.Vocab];
        _memory.Download<float>(_cache.LogitsAt(hit.Slot), logits);
        var next = new long[1];
        _memory.Download<long>(_cache.NextAt(hit.Slot), next);
        // the state goes from the device straight into the file's bytes
        return (PrefixHandOff?)PrefixHandOff.Build(Session.Manifest, tokens[..hit.Length], (i, dest) => _cache.States!.ReadTensor(0, i, hit.Slot, dest), logits, next[0]);
    });

    /// <summary>
    /// Stores a prefix state from another replica in this engine's prefix cache, as if it had read those tokens itself.
    /// False when the cache is off or already holds them. The entry must come from this model (<see cref="PrefixHandOff.FromBytes"/> checks).
    /// </summary>
    public Task<bool> ImportPrefixAsync(PrefixHandOff entry) => OnLoop(() =>
    {
        if (Generation.StateSnapshot.Signature(entry.Manifest) != Generation.StateSnapshot.Signature(Session.Manifest))
            throw new XLstmOnnxException($"the prefix state is for a model with {Generation.StateSnapshot.Signature(entry.Manifest)}; this model has {Generation.StateSnapshot.Signature(Session.Manifest)}.");
        if (_cache.Reserve(entry.Tokens) is not { } slot) return false;
        for (int i = 0; i < _cache.States!.TensorCount; i++) _cache.States.WriteTensor(0, i, slot, entry.State(i));
        _memory.Upload<float>(entry.Logits, _cache.LogitsAt(slot));
        _memory.Upload<long>([entry.Next], _cache.NextAt(slot));
        Metrics.CacheBytes = _cache.Bytes;
        Metrics.CacheEntries = _cache.Count;
        return true;
    });

    /// <summary>Waiting requests take staging rows while the pool has room for them; each starts from its longest cached prefix.</summary>
    private void Admit()
    {
        while (_freeStaging.Count > 0 && _count + _jobs.Count < _o.MaxBatch && _queue.Reader.TryRead(out var req))
        {
            Interlocked.Decrement(ref _queued);
            _transit.Add(req);
            if (req.Cancel.IsCancellationRequested)
            {
                req.Events.Writer.TryComplete();
                Metrics.Finished(cancelled: true);
                _transit.Remove(req);
                continue;
            }
            Metrics.PromptTokens(req.Prompt.Length);
            var hit = _cache.Lookup(req.Prompt);
            if (hit is { } whole && whole.Length == req.Prompt.Length)
            {
                // the whole prompt is cached, with its logits: the request joins without a model call
                int row = _count;
                _cache.States!.CopyRow(0, whole.Slot, _pool, _set, row);
                _memory.Copy(_runner.LogitsAt(row), _cache.LogitsAt(whole.Slot), _runner.Vocab * 4);
                _memory.Copy(_runner.NextAt(row), _cache.NextAt(whole.Slot), 8);
                _memory.Wait();
                Join([req], row);
                _transit.Remove(req);
                continue;
            }
            var job = new Job(req, _freeStaging.Pop()) { Since = _steps };
            if (hit is { } h)
            {
                _cache.States!.CopyRow(0, h.Slot, _staging, job.Set, job.Row);
                job.Start = h.Length;
            }
            else
            {
                job.Fresh = true; // zeros, written where the state is first read (often straight into a rider or pool row)
            }
            job.Lead = _pieces.LeadPads(req.Prompt.Length - job.Start);
            _jobs.Add(job);
            _transit.Remove(req);
        }
        Metrics.QueueDepth = Volatile.Read(ref _queued);
        Metrics.CacheHits = _cache.Hits;
        Metrics.CacheMisses = _cache.Misses;
    }

    /// <summary>
    /// Reads prompts. A group (see <see cref="ReadsWhole"/>) is read directly in the rows it joins: alone in one call,
    /// several with their whole chunks in one call and their recurrent tails in another (HF's own split of a segment;
    /// the left pads of each call are whole chunks or recurrent no-ops, so every row runs the schedule it runs alone).
    /// With live sequences a group may wait up to <see cref="ServingOptions.PrefillGatherSteps"/> decode steps for company.
    /// The other prompts are read at batch 1, those read in one piece first, then the oldest in pieces. With live sequences all of it is paced: each decode step earns
    /// <see cref="ServingOptions.PrefillShare"/> of its time as credit, which reading spends (a group or a piece may go
    /// into debt). Without live sequences everything is read at once.
    /// </summary>
    private void Prefill()
    {
        if (_mixed && _count > 0) return; // prompts ride in the decode steps (Step)
        SpillRider();
        bool paced = _count > 0;
        var whole = _jobs.Where(j => ReadsWhole(j, paced)).ToList();
        if (whole.Count > 0 && (!paced || (_credit > 0 && Gathered(whole)))) ReadWhole(whole);
        while (true)
        {
            paced = _count > 0;
            if (paced && _credit <= 0) return;
            int k = _jobs.FindIndex(j => !ReadsWhole(j, paced));
            if (k < 0) return;
            var job = _jobs[k];
            int piece = _pieces.Piece(job.Position, job.Left,
                paced ? _o.PrefillChunkTokens ?? (long)(_credit * Math.Max(_prefillTokensPerSecond, 1)) : null);
            long t0 = Stopwatch.GetTimestamp();
            Read(job, piece);
            Spent(piece, Stopwatch.GetElapsedTime(t0).TotalSeconds, paced);
            if (job.Left > 0) continue; // the same job goes on while there is credit
            _transit.Add(job.Request);
            _jobs.RemoveAt(k);
            int row = _count;
            _staging.CopyRow(job.Set, job.Row, _pool, _set, row);
            _freeStaging.Push(job.Row);
            Join([job.Request], row);
            _transit.Remove(job.Request);
        }
    }

    /// <summary>
    /// Whether <paramref name="job"/> is read in the group: without live sequences, when its rest stays inside its segment;
    /// with live sequences, only when its rest is shorter than a chunk (one call, recurrent no-op pads). A group of
    /// longer prompts takes two calls, and on the H200 such groups read while others decode cost more time to first
    /// token than they saved (tools/serve/README.md): with live sequences those are read one by one.
    /// </summary>
    private bool ReadsWhole(Job job, bool paced)
    {
        int rest = job.Left;
        if (_pieces.SegmentRest(job.Position, rest) < rest) return false;
        return !paced || rest < _chunk;
    }

    /// <summary>A group is read when it fills the free rows, or its oldest prompt has waited its steps.</summary>
    private bool Gathered(List<Job> whole) =>
        whole.Count >= Math.Min(_o.PrefillRows, _o.MaxBatch - _count) || _steps - whole.Min(j => j.Since) >= _o.PrefillGatherSteps;

    private void Spent(int tokens, double seconds, bool paced)
    {
        double rate = tokens / Math.Max(seconds, 1e-6);
        _prefillTokensPerSecond = _prefillTokensPerSecond == 0 ? rate : 0.8 * _prefillTokensPerSecond + 0.2 * rate;
        if (paced) _credit -= seconds;
    }

    /// <summary>
    /// Reads the rest of every job of <paramref name="group"/> in the pool rows they join: rows with whole chunks to read
    /// go through one call of them, rows with a recurrent tail through one call of those (rows ordered: tail only, both,
    /// chunks only, so that each call covers a run of rows). After each call the rows come back to the live rows' set.
    /// </summary>
    private void ReadWhole(List<Job> group)
    {
        try
        {
            ReadWholeOrThrow(group);
        }
        catch (Exception e)
        {
            // these requests are out of the waiting jobs and not yet live: the failure must reach them here
            foreach (var job in group) job.Request.Events.Writer.TryComplete(e);
            throw;
        }
    }

    /// <summary>Tests only: runs as requests join the live rows, with their number (a failure there is a failed device copy).</summary>
    internal Action<int>? BeforeJoin { get; set; }

    /// <summary>Tests only: runs before each group call with the number of rows it reads (a failure there is a failed model call).</summary>
    internal Action<int>? BeforeGroupCall { get; set; }

    private void ReadWholeOrThrow(List<Job> group)
    {
        int Rest(Job j) => j.Left;                           // positions: lead pads (whole-chunk readings) and tokens
        int Head(Job j) => (int)(Rest(j) / _chunk * _chunk);
        var ordered = group.OrderBy(j => Head(j) == 0 ? 0 : Rest(j) > Head(j) ? 1 : 2).ToList();
        int first = _count, n = ordered.Count;
        for (int g = 0; g < n; g++)
        {
            var job = ordered[g];
            MoveState(job, _pool, _set, first + g);
            _freeStaging.Push(job.Row);
            _jobs.Remove(job);
        }
        int tailOnly = ordered.Count(j => Head(j) == 0), tails = ordered.Count(j => Rest(j) > Head(j));
        long t0 = Stopwatch.GetTimestamp();
        int tokens = 0;
        // start: the job's first position in the call, counted from its next unread one (a tail call's start is past the
        // lead pads: only readings without them have tails)
        void Call(int from, int count, Func<Job, int> start, Func<Job, int> length)
        {
            if (count == 0) return;
            int seq = Enumerable.Range(from, count).Max(g => length(ordered[g]));
            var ids = new long[count * seq];
            var mask = new long[count * seq];
            long pad = _session.Manifest.PadTokenId ?? 0;
            for (int i = 0; i < count; i++)
            {
                var job = ordered[from + i];
                int at = start(job);
                var piece = PromptPieces.Reading(length(job), at == 0 ? job.Pads : 0);
                PromptPieces.Fill(job.Request.Prompt, job.Fed + at, piece, pad, ids.AsSpan(i * seq, seq), mask.AsSpan(i * seq, seq));
                tokens += piece.Tokens;
            }
            BeforeGroupCall?.Invoke(count);
            _runner.Prompt(_pool, _set, first + from, count, ids, mask, seq, first + from);
            // the live rows stay in their set: the new rows come back to it
            for (int i = 0; i < count; i++) _pool.CopyRow(1 - _set, first + from + i, _pool, _set, first + from + i);
        }
        if (n == 1)
        {
            Call(0, 1, _ => 0, Rest); // alone, one call runs the same split inside the cell (and costs one weight read, not two)
        }
        else
        {
            Call(tailOnly, n - tailOnly, _ => 0, Head);                          // whole chunks: rows with some
            Call(0, tails, Head, j => Rest(j) - Head(j));                        // recurrent tails: rows with one
        }
        Spent(tokens, Stopwatch.GetElapsedTime(t0).TotalSeconds, _count > 0);
        Join([.. ordered.Select(j => j.Request)], first);
    }

    /// <summary>Reads the next <paramref name="piece"/> positions of <paramref name="job"/> (its unread lead pads first).</summary>
    private void Read(Job job, int piece)
    {
        if (job.Fresh) MoveState(job, _staging, job.Set, job.Row);
        var (ids, mask) = PromptPieces.Ids(job.Request.Prompt, job.Fed, PromptPieces.Reading(piece, job.Pads), _session.Manifest.PadTokenId ?? 0);
        // its logits land in the row it will join (every live row has chosen its token: their logits are spent)
        _runner.Prompt(_staging, job.Set, job.Row, 1, ids, mask, piece, _count);
        job.Set = 1 - job.Set;
        job.Position += piece;
    }

    /// <summary>
    /// Puts <paramref name="job"/>'s state in row <paramref name="row"/> of <paramref name="to"/>'s set <paramref name="set"/>:
    /// zeros for a new prompt whose state was never written, else a copy of its prefill row.
    /// </summary>
    private void MoveState(Job job, StatePool to, int set, int row)
    {
        if (job.Fresh) to.Zero(set, row, 1);
        else _staging.CopyRow(job.Set, job.Row, to, set, row);
        job.Fresh = false;
    }

    /// <summary>
    /// Rows [<paramref name="first"/>, first + n) (= the next live rows) hold these requests' states after their prompts,
    /// and the runner holds their last logits: each prompt is cached, and its first token chosen and sent.
    /// </summary>
    private void Join(IReadOnlyList<Request> requests, int first)
    {
        BeforeJoin?.Invoke(requests.Count);
        int n = requests.Count;
        for (int g = 0; g < n; g++)
        {
            var req = requests[g];
            int row = first + g;
            if (req.Prompt.Length >= _o.PrefixCacheMinTokens && _cache.Reserve(req.Prompt) is { } slot)
            {
                _pool.CopyRow(_set, row, _cache.States!, 0, slot);
                _memory.Copy(_cache.LogitsAt(slot), _runner.LogitsAt(row), _runner.Vocab * 4);
                _memory.Copy(_cache.NextAt(slot), _runner.NextAt(row), 8);
                _memory.Wait();
            }
            var decoder = new SequenceDecoder(req.Options, _session.Manifest, _tokenizer, withText: true);
            _live[row] = new Live(req, decoder);
            _decoders[row] = decoder;
            if (decoder.NeedsCounts) _chooser.SetCounts(row, req.Prompt);
        }
        Metrics.CacheBytes = _cache.Bytes;
        Metrics.CacheEntries = _cache.Count;
        _count += n;
        _chooser.Choose(_decoders, first, n, _tokens);
        long now = Stopwatch.GetTimestamp();
        for (int row = first + n - 1; row >= first; row--)
        {
            var live = _live[row]!;
            Metrics.FirstToken(Stopwatch.GetElapsedTime(live.Request.Enqueued, now));
            live.LastTokenAt = now;
            if (_tokens[row] == TokenChooser.NonFinite) Free(row, cancelled: false, TokenChooser.NonFiniteError(row, 0));
            else if (Emit(row, _tokens[row])) Free(row, cancelled: false);
        }
    }

    /// <summary>One token for every live row (with mixed steps, and pieces of the oldest waiting prompts), then the next choices.</summary>
    private void Step()
    {
        int b = _buckets[^1];
        foreach (int x in _buckets)
        {
            if (x < _count) continue;
            b = x;
            break;
        }
        long pad = _session.Manifest.PadTokenId ?? 0;
        for (int r = 0; r < b; r++)
        {
            bool real = r < _count;
            _runner.Ids[r] = real ? _live[r]!.Decoder.LastToken : pad;
            _runner.Mask[r] = real ? 1 : 0;
        }
        Metrics.Occupancy = _count;
        if (_mixed) TakeRiders();
        int n = _riders.Count, tokens = 0;
        long t0 = Stopwatch.GetTimestamp();
        if (n == 0)
        {
            _runner.Decode(b, _set);
        }
        else
        {
            // each rider's piece, left-padded to the longest with masked positions: whole chunks when several ride
            var shapes = _riders.Select(j => _pieces.Mixed(j.Position, j.Left, j.Pads)).ToArray();
            int seq = shapes.Max(x => x.Length);
            var ids = new long[n * seq];
            var mask = new long[n * seq];
            for (int r = 0; r < n; r++)
            {
                PromptPieces.Fill(_riders[r].Request.Prompt, _riders[r].Fed, shapes[r], pad, ids.AsSpan(r * seq, seq), mask.AsSpan(r * seq, seq));
                _mixedShapes.Add((shapes[r].Length, shapes[r].PadsAt));
            }
            // the riders' logits land in output rows [b, b + n), after the decode rows'; their states go from set _set to
            // 1 − _set with the live rows'
            _runner.DecodeWithPrompt(b, _set, _rider!, _set, 0, n, ids, mask, seq);
            for (int r = 0; r < n; r++)
            {
                _riders[r].Position += _pieces.Positions(shapes[r]);
                tokens += shapes[r].Tokens;
            }
            if (n > 1) _mixedRows.Add(n);
        }
        _set = 1 - _set;
        var step = Stopwatch.GetElapsedTime(t0);
        Interlocked.Increment(ref _stepsByBatch[b]);
        _steps++;
        Metrics.DecodeStep(step, _count);
        if (n == 0)
        {
            _stepSeconds = _stepSeconds == 0 ? step.TotalSeconds : 0.9 * _stepSeconds + 0.1 * step.TotalSeconds;
            _credit = Math.Min(_credit + _o.PrefillShare * step.TotalSeconds, 4 * _o.PrefillShare * _stepSeconds);
        }
        else
        {
            Metrics.MixedStep(tokens, n, step);
        }
        _chooser.Choose(_decoders, 0, _count, _tokens);
        long now = Stopwatch.GetTimestamp();
        // back to front: a finished row is replaced by the last one, which has already been handled
        for (int r = _count - 1; r >= 0; r--)
        {
            var live = _live[r]!;
            Metrics.InterToken(Stopwatch.GetElapsedTime(live.LastTokenAt, now));
            live.LastTokenAt = now;
            // a row whose logits are not finite ends with an error; the others go on
            if (_tokens[r] == TokenChooser.NonFinite) Free(r, cancelled: false, TokenChooser.NonFiniteError(r, live.Decoder.Generated));
            else if (Emit(r, _tokens[r])) Free(r, cancelled: false);
        }
        if (n > 0) JoinRiders(b);
    }

    /// <summary>
    /// Fills the free rider rows with the oldest waiting prompts that do not ride yet: a prompt's state moves from its
    /// prefill row (or, still zeros, is written) into the rider row, in the live rows' set.
    /// </summary>
    private void TakeRiders()
    {
        foreach (var job in _jobs)
        {
            if (_riders.Count == _riderRows) break;
            if (_riders.Contains(job)) continue;
            MoveState(job, _rider!, _set, _riders.Count);
            _riders.Add(job);
        }
    }

    /// <summary>
    /// The riders whose prompts are read join the live rows (after this step's frees, so at the first free rows), each
    /// with its logits moved from its output row (after the step's <paramref name="decodeRows"/> decode rows); the riders
    /// still reading move down to the first rider rows.
    /// </summary>
    private void JoinRiders(int decodeRows)
    {
        var staying = new List<Job>();
        for (int r = 0; r < _riders.Count; r++)
        {
            var job = _riders[r];
            if (job.Left > 0)
            {
                if (staying.Count < r) _rider!.CopyRow(_set, r, _rider, _set, staying.Count);
                // the output row of rider r is beyond the rows joined so far: joins go to rows below decodeRows + r
                staying.Add(job);
                continue;
            }
            _transit.Add(job.Request);
            _jobs.Remove(job);
            int row = _count;
            _rider!.CopyRow(_set, r, _pool, _set, row);
            _freeStaging.Push(job.Row);
            _runner.CopyOutputs(decodeRows + r, row);
            Join([job.Request], row);
            _transit.Remove(job.Request);
        }
        _riders.Clear();
        _riders.AddRange(staying);
    }

    /// <summary>Puts the riders' states back in their prefill rows (they are then read between steps, or not at all).</summary>
    private void SpillRider()
    {
        for (int r = 0; r < _riders.Count; r++)
        {
            var job = _riders[r];
            _rider!.CopyRow(_set, r, _staging, job.Set, job.Row);
        }
        _riders.Clear();
    }

    /// <summary>Sends row <paramref name="row"/>'s token; true when the sequence ends with it.</summary>
    private bool Emit(int row, int token)
    {
        var live = _live[row]!;
        var d = live.Decoder;
        var (text, finish) = d.Accept(token);
        Metrics.CompletionTokens(1);
        var e = new CompletionEvent(token, text, finish);
        if (d.WantsLogProbs) e = e with { LogProb = _chooser.LogProbs[row], TopLogProbs = Top(row, d.Options.TopLogProbs) };
        live.Request.Events.Writer.TryWrite(e);
        if (finish != StopReason.None) Metrics.Stopped(finish);
        return finish != StopReason.None;
    }

    /// <summary>Row <paramref name="row"/>'s <paramref name="count"/> most likely tokens of the last choice; null for none.</summary>
    private TokenLogProb[]? Top(int row, int count)
    {
        if (count == 0) return null;
        int k = _chooser.TopCount;
        var top = new TokenLogProb[Math.Min(count, k)];
        for (int i = 0; i < top.Length; i++) top[i] = new TokenLogProb((int)_chooser.TopIds[row * k + i], _chooser.TopLogProbs[row * k + i]);
        return top;
    }

    private void DropCancelled()
    {
        for (int r = _count - 1; r >= 0; r--)
        {
            if (_live[r]!.Request.Cancel.IsCancellationRequested) Free(r, cancelled: true);
        }
        for (int k = _jobs.Count - 1; k >= 0; k--)
        {
            var job = _jobs[k];
            if (!job.Request.Cancel.IsCancellationRequested) continue;
            job.Request.Events.Writer.TryComplete();
            _freeStaging.Push(job.Row);
            _jobs.RemoveAt(k);
            if (_riders.Contains(job)) SpillRider(); // the others ride again from their prefill rows at the next step
            Metrics.Finished(cancelled: true);
        }
    }

    /// <summary>
    /// Ends row <paramref name="row"/>'s sequence (with <paramref name="error"/> on its events, when given); the last live
    /// row moves into its place (state and token counts).
    /// </summary>
    private void Free(int row, bool cancelled, Exception? error = null)
    {
        var live = _live[row]!;
        live.Request.Events.Writer.TryComplete(error);
        Metrics.Finished(cancelled, Stopwatch.GetElapsedTime(live.Request.Enqueued));
        int last = _count - 1;
        if (row != last)
        {
            _pool.CopyRow(_set, last, _pool, _set, row);
            if (_live[last]!.Decoder.NeedsCounts) _chooser.MoveCounts(last, row);
            _live[row] = _live[last];
            _decoders[row] = _decoders[last];
            _tokens[row] = _tokens[last];
        }
        _live[last] = null;
        _decoders[last] = null;
        _count--;
        Metrics.Occupancy = _count;
    }

    private void DisposeBuffers()
    {
        _cache?.Dispose();
        _chooser?.Dispose();
        _runner?.Dispose();
        _staging?.Dispose();
        _rider?.Dispose();
        _pool?.Dispose();
    }

    public void Dispose()
    {
        _stop.Cancel();
        _loop?.Join();
        DisposeBuffers();
        _stop.Dispose();
        Metrics.Dispose();
    }
}
