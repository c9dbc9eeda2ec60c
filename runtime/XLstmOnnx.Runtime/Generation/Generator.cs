using System.Diagnostics;
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

    public int Batch { get; }
    public ModelManifest Manifest => _m;
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

    /// <summary>The argmax of row <paramref name="row"/>'s last logits: the model's next_token when it has one.</summary>
    public int GreedyNext(int row)
    {
        CheckRow(row);
        if (!_fresh[row]) throw new InvalidOperationException($"row {row} read no token in the last call: it has no next token.");
        if (!HasDeviceArgMax) return Sampler.ArgMax(LastLogits(row));
        Span<long> next = stackalloc long[1];
        _runner.DownloadNext(row, next);
        return (int)next[0];
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
            for (int r = 0; r < Batch; r++) next[r] = Sampler.ArgMax(LastLogits(r));
            return;
        }
        Span<long> ids = Batch <= 256 ? stackalloc long[Batch] : new long[Batch];
        _runner.DownloadNext(0, ids);
        for (int r = 0; r < Batch; r++) next[r] = (int)ids[r];
    }

    /// <summary>Back to the zero state ("start"), forgetting pending tokens.</summary>
    public void Reset()
    {
        _pool.Zero(_set, 0, Batch);
        Array.Clear(_pending);
        Array.Clear(_fresh);
        Empty = true;
    }

    /// <summary>True after <see cref="Reset"/> (and at the start) until a token is read.</summary>
    private bool Empty { get; set; } = true;

    /// <summary>
    /// Feeds tokens to each row (a row may get none: its state stays as it is). A chosen token that was not yet fed goes
    /// first. Long inputs are fed in segments of max_inference_chunksize, as HF does.
    /// </summary>
    public void Append(IReadOnlyList<IReadOnlyList<int>> tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Count != Batch) throw new ArgumentException($"expected {Batch} rows, got {tokens.Count}", nameof(tokens));
        var rows = new int[Batch][];
        for (int r = 0; r < Batch; r++)
        {
            foreach (int t in tokens[r]) CheckId(t);
            rows[r] = _pending[r] is { } p ? [p, .. tokens[r]] : [.. tokens[r]];
            _pending[r] = null;
        }
        Feed(rows);
    }

    /// <summary>Feeds one row's tokens for a batch of one (multi-turn chat on the live state).</summary>
    public void Append(ReadOnlySpan<int> tokens) => Append([tokens.ToArray()]);

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
    /// <see cref="Append(IReadOnlyList{IReadOnlyList{int}})"/> or Generate.
    /// </summary>
    public GenerationResult Generate(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions options, Action<int, int, string>? onToken = null)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (options.StopStrings.Count > 0 && Tokenizer is null)
        {
            throw new XLstmOnnxException($"GenerationOptions.StopStrings needs the model's tokenizer.json, which {_model.Directory} does not have.");
        }
        var clock = Stopwatch.StartNew();
        var decoders = new SequenceDecoder?[Batch];
        var outputs = new List<int>[Batch];
        var reasons = new StopReason[Batch];
        for (int r = 0; r < Batch; r++)
        {
            decoders[r] = new SequenceDecoder(options, _m, Tokenizer, onToken is not null);
            outputs[r] = new List<int>(options.MaxNewTokens);
        }
        if (decoders[0]!.NeedsCounts)
        {
            for (int r = 0; r < Batch; r++) _chooser.SetCounts(r, [.. History(r), .. prompts[r]]);
        }
        bool anyInput = Enumerable.Range(0, Batch).Any(r => prompts[r].Count > 0 || _pending[r] is not null);
        if (!anyInput && Empty) throw new XLstmOnnxException("Generate needs a prompt: the state is empty (after Reset) and no tokens were given.");
        Append(prompts);
        for (int r = 0; r < Batch; r++)
        {
            if (!_fresh[r]) throw new XLstmOnnxException($"Generate: row {r} has no token to continue from (give it a prompt).");
        }
        TimeSpan ttft = TimeSpan.Zero, decodeStart = TimeSpan.Zero;
        int steps = 0;
        for (int step = 0; step < options.MaxNewTokens; step++)
        {
            _chooser.Choose(decoders, 0, Batch, _chosen);
            bool active = false;
            for (int r = 0; r < Batch; r++)
            {
                if (decoders[r] is not { } d) continue;
                int token = _chosen[r];
                outputs[r].Add(token);
                var (text, finish) = d.Accept(token);
                onToken?.Invoke(r, token, text);
                _runner.Ids[r] = token;
                _runner.Mask[r] = 1;
                if (finish != StopReason.None)
                {
                    // a stopped row reads nothing more: its last token stays pending and its state untouched
                    reasons[r] = finish;
                    _pending[r] = token;
                    decoders[r] = null;
                    _runner.Ids[r] = _padId;
                    _runner.Mask[r] = 0;
                }
                else active = true;
            }
            if (step == 0)
            {
                ttft = clock.Elapsed;
                decodeStart = clock.Elapsed;
            }
            if (!active) break;
            Step();
            steps++;
        }
        var decode = clock.Elapsed - decodeStart;
        return new GenerationResult(outputs.Select(o => o.ToArray()).ToArray(), reasons, ttft, decode, steps);
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

    private void CheckId(int t)
    {
        if (t < 0 || t >= _m.VocabSize) throw new XLstmOnnxException($"token id {t} is outside the model's vocabulary [0, {_m.VocabSize}).");
    }

    public void Dispose()
    {
        _chooser?.Dispose();
        _runner?.Dispose();
        _pool?.Dispose();
    }
}
