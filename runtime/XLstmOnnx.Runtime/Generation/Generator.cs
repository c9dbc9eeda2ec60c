using System.Diagnostics;
using System.Runtime.CompilerServices;
using XLstmOnnx.Contract;
using XLstmOnnx.Runtime.Tokenization;

namespace XLstmOnnx.Runtime.Generation;

/// <summary>What one <see cref="Generator.Generate"/> call produced.</summary>
public sealed record GenerationResult(int[][] Tokens, StopReason[] Reasons, TimeSpan TimeToFirstToken, TimeSpan DecodeTime, int DecodeSteps)
{
    /// <summary>Tokens per second of the decode phase (all rows), 0 when there was none.</summary>
    public double DecodeTokensPerSecond => DecodeTime.TotalSeconds > 0 ? Tokens.Sum(t => Math.Max(0, t.Length - 1)) / DecodeTime.TotalSeconds : 0;
}

/// <summary>
/// Stateful generation for a fixed batch of sequences, one row each. The recurrent state lives in the execution
/// provider's memory (a <see cref="StatePool"/> of two buffer sets, read and written alternately); prompts of
/// different lengths are left-padded and masked (a masked position leaves a row's state untouched, so a batch gives
/// each row the tokens it gets alone); decode steps read their ids from fixed buffers, so that with
/// <see cref="RuntimeOptions.CudaGraph"/> each state set replays its own captured graph; tokens are chosen on the device
/// (the model's next_token, or the exported sampler), so a step copies B ids back, not B·V logits. The same pieces
/// (pool, <see cref="StepRunner"/>, <see cref="TokenChooser"/>, <see cref="SequenceDecoder"/>) run the serving engine.
/// </summary>
public sealed class Generator : IDisposable
{
    private readonly XLstmSession _model;
    private readonly ModelManifest _m;
    private readonly DeviceMemory _memory;
    private readonly StatePool _pool;
    private readonly StepRunner _runner;
    private readonly TokenChooser _chooser;
    private int _set;                                  // the pool's set holding the current state
    private readonly int?[] _pending;                  // a chosen token not yet fed, per row
    private readonly bool[] _fresh;                    // per row: the runner's logits are the ones after its last token
    private readonly float[] _logits;                  // one row's logits on the host (LastLogits)
    private readonly int[] _chosen;
    private readonly long _padId;
    private readonly Schedule _schedule;
    private GenerationRun? _run;                       // the run in progress: ended by any other call that moves the state

    /// <summary>A generator of <paramref name="batch"/> sequences over <paramref name="model"/>, from the zero state.</summary>
    /// <param name="model">The loaded export; not owned (several generators may share it).</param>
    /// <param name="batch">Sequences generated together, one row each.</param>
    public Generator(XLstmSession model, int batch = 1)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batch);
        _model = model;
        _m = model.Manifest;
        Batch = batch;
        _padId = _m.PadTokenId ?? 0;
        _schedule = new Schedule(_m.ChunkSize, _m.MaxInferenceChunksize);
        _memory = DeviceMemory.For(model.Options);
        try
        {
            _pool = new StatePool(_m, _memory, batch, 2, $"the recurrent state of {batch} sequence(s)");
            _runner = new StepRunner(model, _memory, _pool);
            _chooser = new TokenChooser(model, _runner, _memory);
        }
        catch
        {
            Dispose();
            throw;
        }
        _pending = new int?[batch];
        _fresh = new bool[batch];
        _logits = new float[_m.VocabSize];
        _chosen = new int[batch];
    }

    /// <summary>Sequences generated together, one row each.</summary>
    public int Batch { get; }

    /// <summary>The export's contract (sizes, token ids, state layout).</summary>
    public ModelManifest Manifest => _m;

    /// <summary>The export's tokenizer (tokenizer.json), or null when it has none.</summary>
    public HfTokenizer? Tokenizer => _model.Tokenizer;

    /// <summary>Whether the model computes the argmax on the device (exported with --next-token).</summary>
    public bool HasDeviceArgMax => _m.NextToken;

    /// <summary>
    /// The logits after the last token row <paramref name="row"/> has read, copied from the device. Valid until the next
    /// call; a row that read nothing in the last call has none (its logits row was not kept).
    /// </summary>
    public ReadOnlySpan<float> LastLogits(int row)
    {
        CheckRow(row);
        if (!_fresh[row]) throw new InvalidOperationException($"row {row} read no token in the last call: its logits are not kept.");
        _runner.DownloadLogits(row, _logits);
        return _logits;
    }

    /// <summary>
    /// The argmax of row <paramref name="row"/>'s last logits: the model's next_token when it has one;
    /// <see cref="GraphNames.NonFiniteToken"/> when the logits hold a NaN or an infinity.
    /// </summary>
    public int GreedyNext(int row)
    {
        CheckRow(row);
        if (!_fresh[row]) throw new InvalidOperationException($"row {row} read no token in the last call: it has no next token.");
        if (!HasDeviceArgMax) return HostArgMax(row);
        Span<long> next = stackalloc long[1];
        _runner.DownloadNext(row, next);
        return (int)next[0];
    }

    private int HostArgMax(int row)
    {
        var logits = LastLogits(row);
        return Sampler.AllFinite(logits) ? Sampler.ArgMax(logits) : TokenChooser.NonFinite;
    }

    /// <summary>Every row's argmax (<see cref="GreedyNext(int)"/>) at once: one copy of B ids with a next_token model.</summary>
    public void GreedyNext(Span<int> next)
    {
        if (next.Length != Batch) throw new ArgumentException($"expected {Batch} rows; got {next.Length}", nameof(next));
        for (int r = 0; r < Batch; r++)
        {
            if (!_fresh[r]) throw new InvalidOperationException($"row {r} read no token in the last call: it has no next token.");
        }
        if (!HasDeviceArgMax)
        {
            for (int r = 0; r < Batch; r++) next[r] = HostArgMax(r);
            return;
        }
        Span<long> ids = Batch <= 256 ? stackalloc long[Batch] : new long[Batch];
        _runner.DownloadNext(0, ids);
        for (int r = 0; r < Batch; r++) next[r] = (int)ids[r];
    }

    /// <summary>Back to the zero state ("start"), forgetting pending tokens.</summary>
    public void Reset()
    {
        EndRun();
        _pool.Zero(_set, 0, Batch);
        Array.Clear(_pending);
        Array.Clear(_fresh);
        Empty = true;
    }

    /// <summary>True after <see cref="Reset"/> (and at the start) until a token is read.</summary>
    private bool Empty { get; set; } = true;

    /// <summary>
    /// Feeds tokens to each row (a row may get none: its state stays as it is). A chosen token that was not yet fed goes
    /// first. Long inputs are fed in segments of max_inference_chunksize, as HF does. Ends the <see cref="GenerationRun"/>
    /// in progress, if any (<see cref="GenerationRun.Append(IReadOnlyList{IReadOnlyList{int}})"/> appends within a run).
    /// </summary>
    public void Append(IReadOnlyList<IReadOnlyList<int>> tokens)
    {
        CheckRows(tokens, "Generator.Append(tokens)"); // a bad argument leaves the run in progress as it is
        EndRun();
        AppendCore(tokens);
    }

    /// <summary>Feeds one row's tokens for a batch of one (multi-turn chat on the live state).</summary>
    public void Append(ReadOnlySpan<int> tokens) => Append([tokens.ToArray()]);

    /// <summary>Feeds each row its pending token (if any) and <paramref name="tokens"/>; checks every id before anything moves.</summary>
    internal void AppendCore(IReadOnlyList<IReadOnlyList<int>> tokens, string parameter = "Generator.Append(tokens)")
    {
        CheckRows(tokens, parameter);
        var rows = new int[Batch][];
        for (int r = 0; r < Batch; r++) rows[r] = _pending[r] is { } p ? [p, .. tokens[r]] : [.. tokens[r]];
        Array.Clear(_pending);
        Feed(rows);
    }

    /// <summary>Throws naming <paramref name="parameter"/> unless <paramref name="tokens"/> has one list per row, of ids in the vocabulary.</summary>
    internal void CheckRows(IReadOnlyList<IReadOnlyList<int>> tokens, string parameter)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Count != Batch)
        {
            throw XLstmOnnxException.InParameter(parameter, $"{parameter} must have one list per row of the generator's batch, {Batch}; found {tokens.Count}.");
        }
        for (int r = 0; r < Batch; r++)
        {
            if (tokens[r] is null) throw XLstmOnnxException.InParameter(parameter, $"{parameter}: row {r} is null; give an empty list to feed it nothing.");
            foreach (int t in tokens[r])
            {
                if (t < 0 || t >= _m.VocabSize)
                {
                    throw XLstmOnnxException.InParameter(parameter, $"{parameter}: row {r} has token id {t}, outside the model's vocabulary [0, {_m.VocabSize}).");
                }
            }
        }
    }

    private void Feed(int[][] rows)
    {
        int s = rows.Max(r => r.Length);
        if (s == 0) return;
        Empty = false;
        if (s == 1)
        {
            for (int r = 0; r < Batch; r++)
            {
                bool real = rows[r].Length == 1;
                _runner.Ids[r] = real ? rows[r][0] : _padId;
                _runner.Mask[r] = real ? 1 : 0;
            }
            Step();
            return;
        }
        // HF reads long inputs in segments of max_inference_chunksize, each in its own call of the cell
        foreach (var (a, length) in _schedule.Segments(s))
        {
            int w = (int)length;
            var ids = new long[Batch * w];
            var mask = new long[Batch * w];
            for (int r = 0; r < Batch; r++)
            {
                int pad = s - rows[r].Length; // left padding: a row's tokens end in the last column
                for (int j = 0; j < w; j++)
                {
                    long col = a + j;
                    bool real = col >= pad;
                    ids[r * w + j] = real ? rows[r][col - pad] : _padId;
                    mask[r * w + j] = real ? 1 : 0;
                }
            }
            _runner.Prompt(_pool, _set, 0, Batch, ids, mask, w, 0);
            _set = 1 - _set;
            for (int r = 0; r < Batch; r++) _fresh[r] = mask[r * w + w - 1] == 1;
        }
    }

    /// <summary>One token per row from the runner's Ids and Mask.</summary>
    private void Step()
    {
        _runner.Decode(Batch, _set);
        _set = 1 - _set;
        for (int r = 0; r < Batch; r++) _fresh[r] = _runner.Mask[r] == 1;
    }

    /// <summary>
    /// Feeds <paramref name="prompts"/> (one per row; use empty ones to continue from the live state) and generates until
    /// every row stops. <paramref name="onToken"/> sees each (row, token, text) as the token is chosen: the text is what
    /// the token makes safe to show (nothing of a stop string; the row's last token also carries what was held back),
    /// empty without a tokenizer. The last chosen token of each row stays pending: it is fed at the start of the next
    /// <see cref="Append(IReadOnlyList{IReadOnlyList{int}})"/> or Generate. The same loop as <see cref="Start"/> and
    /// <see cref="GenerationRun.Step"/>, run to the end.
    /// </summary>
    public GenerationResult Generate(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions options, Action<int, int, string>? onToken = null)
    {
        using var run = StartCore(prompts, options, onToken is not null, "Generator.Generate(prompts)");
        while (run.Step(out var tokens))
        {
            if (onToken is null) continue;
            foreach (ref readonly var t in tokens) onToken(t.Row, t.Token, t.Text);
        }
        return run.Result();
    }

    /// <summary>
    /// Feeds <paramref name="prompts"/> (one per row; empty ones continue from the live state) and returns a run that
    /// chooses one token per row at each <see cref="GenerationRun.Step"/>, for callers that drive their own loop: look
    /// at each token, stop whenever they like, or append tokens mid-generation (<see cref="GenerationRun.Append(IReadOnlyList{IReadOnlyList{int}})"/>).
    /// A chosen token is fed to the model at the next step, so a run left early leaves the state consistent: the last
    /// chosen token of each row is pending, fed first by whatever comes next (<see cref="Append(IReadOnlyList{IReadOnlyList{int}})"/>,
    /// <see cref="Generate"/>, another run), and kept by <see cref="Snapshot"/>. One run at a time: any call that moves the
    /// state (Append, Generate, Start, GenerateAsync, Reset, Restore) ends the run in progress.
    /// </summary>
    /// <param name="prompts">One token list per row of the batch.</param>
    /// <param name="options">How tokens are chosen and when each row stops.</param>
    /// <param name="decodeText">
    /// Whether <see cref="GeneratedToken.Text"/> is filled (needs the model's tokenizer). Without text a step allocates
    /// nothing on the managed heap; stop strings decode the text whatever this says.
    /// </param>
    /// <returns>The run; disposing it ends it (the state stays where the last step left it).</returns>
    public GenerationRun Start(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions options, bool decodeText = true) =>
        StartCore(prompts, options, decodeText, "Generator.Start(prompts)");

    /// <summary><see cref="Start"/>, with errors in the prompts naming <paramref name="parameter"/>.</summary>
    private GenerationRun StartCore(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions options, bool decodeText, string parameter)
    {
        ArgumentNullException.ThrowIfNull(options);
        CheckRows(prompts, parameter);
        options.Validate(_m.VocabSize);
        if (options.StopStrings.Count > 0 && Tokenizer is null)
        {
            throw XLstmOnnxException.InParameter(GenerationOptions.Name(nameof(GenerationOptions.StopStrings)),
                $"{GenerationOptions.Name(nameof(GenerationOptions.StopStrings))} needs the model's tokenizer.json, which {_model.Directory} does not have.");
        }
        EndRun();
        var clock = Stopwatch.StartNew();
        var decoders = new SequenceDecoder?[Batch];
        for (int r = 0; r < Batch; r++) decoders[r] = new SequenceDecoder(options, _m, Tokenizer, decodeText);
        bool anyInput = Enumerable.Range(0, Batch).Any(r => prompts[r].Count > 0 || _pending[r] is not null);
        if (!anyInput && Empty) throw new XLstmOnnxException("Generate needs a prompt: the state is empty (after Reset) and no tokens were given.");
        int[][]? counted = null;
        if (decoders[0]!.NeedsCounts)
        {
            // the repetition penalty counts the row's known tokens: its pending one and the prompt
            counted = new int[Batch][];
            for (int r = 0; r < Batch; r++)
            {
                counted[r] = [.. History(r), .. prompts[r]];
                _chooser.SetCounts(r, counted[r]);
            }
        }
        AppendCore(prompts, parameter);
        for (int r = 0; r < Batch; r++)
        {
            if (!_fresh[r]) throw new XLstmOnnxException($"Generate: row {r} has no token to continue from (give it a prompt).");
        }
        _run = new GenerationRun(this, options, decoders, counted, clock);
        return _run;
    }

    /// <summary>
    /// Streams a continuation of <paramref name="prompt"/> for a generator of batch 1 (an empty prompt continues from the
    /// live state): each token as it is chosen, with its text (<see cref="GeneratedToken.Text"/>) and, on the last one,
    /// why generation stopped. The same tokens as <see cref="Generate"/> with the same options. Nothing runs until the
    /// stream is enumerated; each model call then runs on the thread pool, so the enumerating thread is never blocked.
    /// Cancellation is checked before each step: the tokens of a step already running are still delivered, then the
    /// enumeration throws <see cref="OperationCanceledException"/>. Stopping early (cancelling, or leaving the
    /// <c>await foreach</c>) leaves the state as <see cref="Start"/> describes: the last delivered token is pending.
    /// </summary>
    /// <param name="prompt">The tokens to read first.</param>
    /// <param name="options">How tokens are chosen and when generation stops.</param>
    /// <param name="cancellationToken">Stops the stream before the next token.</param>
    public IAsyncEnumerable<GeneratedToken> GenerateAsync(IReadOnlyList<int> prompt, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        if (Batch != 1)
        {
            throw XLstmOnnxException.InParameter("Generator.GenerateAsync(prompt)",
                $"Generator.GenerateAsync(prompt) streams one sequence; this generator has batch {Batch}: give one prompt per row (Generator.GenerateAsync(prompts)).");
        }
        return GenerateAsync([prompt], options, cancellationToken);
    }

    /// <summary>
    /// Streams the continuations of <paramref name="prompts"/> (one per row; empty ones continue from the live state):
    /// at each step, the token of every row still generating, in row order (<see cref="GeneratedToken.Row"/>). Otherwise as
    /// <see cref="GenerateAsync(IReadOnlyList{int}, GenerationOptions, CancellationToken)"/>.
    /// </summary>
    /// <param name="prompts">One token list per row of the batch.</param>
    /// <param name="options">How tokens are chosen and when each row stops.</param>
    /// <param name="cancellationToken">Stops the stream before the next step.</param>
    public IAsyncEnumerable<GeneratedToken> GenerateAsync(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        // checked now, not at the first MoveNextAsync: a bad argument fails where it is passed
        ArgumentNullException.ThrowIfNull(options);
        CheckRows(prompts, "Generator.GenerateAsync(prompts)");
        options.Validate(_m.VocabSize);
        int[][] copy = [.. prompts.Select(p => p.ToArray())]; // the caller may change its lists before the stream starts
        return Stream(copy, options, cancellationToken);
    }

    /// <summary>
    /// Streams a continuation of the live state (what was appended or generated before) for every row, with no new
    /// prompt; the same as <see cref="GenerateAsync(IReadOnlyList{IReadOnlyList{int}}, GenerationOptions, CancellationToken)"/>
    /// with an empty prompt per row.
    /// </summary>
    /// <param name="options">How tokens are chosen and when each row stops.</param>
    /// <param name="cancellationToken">Stops the stream before the next step.</param>
    public IAsyncEnumerable<GeneratedToken> GenerateAsync(GenerationOptions options, CancellationToken cancellationToken = default) =>
        GenerateAsync([.. Enumerable.Range(0, Batch).Select(_ => Array.Empty<int>())], options, cancellationToken);

    private async IAsyncEnumerable<GeneratedToken> Stream(int[][] prompts, GenerationOptions options, [EnumeratorCancellation] CancellationToken cancel)
    {
        cancel.ThrowIfCancellationRequested();
        using var run = await Task.Run(() => StartCore(prompts, options, true, "Generator.GenerateAsync(prompts)")).ConfigureAwait(false);
        var buffer = new GeneratedToken[Batch];
        // each step on the thread pool, through one reusable work item: the stream allocates nothing per token but its text
        var step = new ThreadPoolCall<int>(() => run.Step(out var tokens) ? Copy(tokens, buffer) : -1);
        while (true)
        {
            cancel.ThrowIfCancellationRequested();
            int n = await step.RunAsync().ConfigureAwait(false);
            if (n < 0) yield break;
            for (int i = 0; i < n; i++) yield return buffer[i];
        }
    }

    private static int Copy(ReadOnlySpan<GeneratedToken> tokens, GeneratedToken[] to)
    {
        tokens.CopyTo(to);
        return tokens.Length;
    }

    /// <summary>Ends the run in progress (its Step then throws): the state stays as its last step left it.</summary>
    private void EndRun()
    {
        _run?.End();
        _run = null;
    }

    /// <summary>Called by <paramref name="run"/> when it is disposed.</summary>
    internal void Ended(GenerationRun run)
    {
        if (ReferenceEquals(_run, run)) _run = null;
    }

    /// <summary>Whether row <paramref name="row"/> holds a chosen token not yet fed.</summary>
    internal bool HasPending(int row) => _pending[row] is not null;

    /// <summary>Row <paramref name="row"/>'s logits are those after its last token (so a token can be chosen from them).</summary>
    internal bool IsFresh(int row) => _fresh[row];

    /// <summary>Chooses the next token of every row with a decoder into <paramref name="tokens"/> (indexed by row).</summary>
    internal void Choose(SequenceDecoder?[] decoders, int[] tokens) => _chooser.Choose(decoders, 0, Batch, tokens);

    /// <summary>Records <paramref name="token"/> as row <paramref name="row"/>'s chosen, not yet fed, token.</summary>
    internal void SetPending(int row, int token) => _pending[row] = token;

    /// <summary>Replaces row <paramref name="row"/>'s token counts: <paramref name="read"/> and <paramref name="generated"/> for the repetition penalty, <paramref name="generated"/> alone for the frequency and presence penalties.</summary>
    internal void SetCounts(int row, ReadOnlySpan<int> read, ReadOnlySpan<int> generated) => _chooser.SetCounts(row, read, generated);

    /// <summary>Row <paramref name="row"/>'s token counts on the device (tests).</summary>
    internal (float[] All, float[] Generated) Counts(int row) => _chooser.ReadCounts(row);

    /// <summary>
    /// One decode step: every row with a decoder reads its pending token, the others nothing (their pending token stays).
    /// Allocates nothing after the first step of a parity.
    /// </summary>
    internal void FeedPending(SequenceDecoder?[] decoders)
    {
        for (int r = 0; r < Batch; r++)
        {
            if (decoders[r] is not null && _pending[r] is { } p)
            {
                _runner.Ids[r] = p;
                _runner.Mask[r] = 1;
                _pending[r] = null;
            }
            else
            {
                _runner.Ids[r] = _padId;
                _runner.Mask[r] = 0;
            }
        }
        Step();
    }

    /// <summary>Tokens a row's repetition penalty counts before a new prompt: only the pending one is known here.</summary>
    private int[] History(int row) => _pending[row] is { } p ? [p] : [];

    /// <summary>A host copy of the current state and pending tokens (restore it later, or save it to a file).</summary>
    public StateSnapshot Snapshot() =>
        new(_m, Batch, _pool.Read(_set, 0, Batch), _pending.Select(p => p is { } v ? new[] { v } : null).ToArray());

    /// <summary>Continues from <paramref name="snapshot"/> (taken from this model with the same batch) on the next call.</summary>
    public void Restore(StateSnapshot snapshot)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        EndRun();
        if (snapshot.Batch != Batch) throw new XLstmOnnxException($"state snapshot has batch {snapshot.Batch}; this generator has batch {Batch}.");
        if (snapshot.Manifest.NumLayers != _m.NumLayers || snapshot.Manifest.QkHeadDim != _m.QkHeadDim || snapshot.Manifest.VHeadDim != _m.VHeadDim || snapshot.Manifest.NumHeads != _m.NumHeads)
        {
            throw new XLstmOnnxException("state snapshot belongs to a model with other state dims.");
        }
        _pool.Write(_set, 0, snapshot.Tensors);
        for (int r = 0; r < Batch; r++) _pending[r] = snapshot.Pending[r] is { Length: > 0 } p ? p[0] : null;
        Array.Clear(_fresh);
        Empty = false;
    }

    private void CheckRow(int row)
    {
        if ((uint)row >= (uint)Batch) throw new ArgumentOutOfRangeException(nameof(row), row, $"rows are 0 to {Batch - 1}");
    }

    public void Dispose()
    {
        EndRun();
        _chooser?.Dispose();
        _runner?.Dispose();
        _pool?.Dispose();
    }
}
