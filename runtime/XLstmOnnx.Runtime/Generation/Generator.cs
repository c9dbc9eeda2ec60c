using System.Diagnostics;
using System.Text;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using XLstmOnnx.GraphBuilder.Architecture;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime.Tokenization;

namespace XLstmOnnx.Runtime.Generation;

/// <summary>What one <see cref="Generator.Generate"/> call produced.</summary>
public sealed record GenerationResult(int[][] Tokens, StopReason[] Reasons, TimeSpan TimeToFirstToken, TimeSpan DecodeTime, int DecodeSteps)
{
    /// <summary>Tokens per second of the decode phase (all rows), 0 when there was none.</summary>
    public double DecodeTokensPerSecond => DecodeTime.TotalSeconds > 0 ? Tokens.Sum(t => Math.Max(0, t.Length - 1)) / DecodeTime.TotalSeconds : 0;
}

/// <summary>
/// Stateful generation for a fixed batch of sequences. The recurrent state lives in the execution provider's memory
/// (GPU memory on CUDA) in two buffer sets, one read as past_state and the other written as present_state, swapped
/// after every call; a buffer is never input and output of the same call. Prompts of different lengths are
/// left-padded and masked, and masked positions leave a row's state untouched, so a batch gives each row the tokens
/// it gets alone. Only the last position's logits come back to the host, or only B argmax ids when the model has
/// next_token and <see cref="CopyLogits"/> is off. On CUDA a decode step reads its ids and mask from fixed device
/// buffers, so that with <see cref="RuntimeOptions.CudaGraph"/> each state parity replays its own captured graph
/// (two ids reserved for this generator; a graph captured over one buffer set must never see another). A decode step allocates nothing.
/// Owns every native object it creates.
/// </summary>
public sealed class Generator : IDisposable
{
    private readonly XLstmSession _model;
    private readonly ModelManifest _m;
    private readonly InferenceSession _session;
    private readonly int _vocab;
    private readonly string[] _past, _present;
    private readonly OrtValue[][] _state = new OrtValue[2][];
    private int _cur;
    private OrtValue[]? _pastOverride;                 // host tensors read as the past on the next call (zeros, a snapshot)
    private readonly List<OrtValue> _owned = [];
    private readonly OrtValue[] _zeros;
    private readonly long[] _stepIds, _stepMask;
    private readonly OrtValue _stepIdsValue, _stepMaskValue;
    private readonly float[] _stepLogits;
    private readonly OrtValue _stepLogitsValue;        // [B,1,V] host
    private readonly OrtIoBinding[] _stepBinding = new OrtIoBinding[2];
    private readonly float[] _last;                    // [B,V] the last logits of each row
    private readonly int?[] _pending;                  // a sampled token not yet fed, per row
    private readonly RunOptions _run;                 // prompts: never captured
    private readonly RunOptions[] _stepRun;            // decode steps, per state parity (two CUDA graph ids of our own)
    private readonly long _padId;
    private TensorCopier? _copier;
    private readonly OrtAllocator? _deviceAllocator;
    private readonly bool _cuda;
    private readonly bool _nextToken;                  // the model has next_token (argmax on the device)
    private readonly long[] _stepNext;                 // [B] next_token of the last call
    private readonly OrtValue? _stepNextValue;         // [B,1] host, for prompt calls and CPU steps
    private readonly OrtValue? _devIds, _devMask, _devLogits, _devNext; // CUDA steps: fixed device buffers
    private readonly DeviceBuffer _devIdsAt, _devMaskAt, _devLogitsAt, _devNextAt; // their addresses
    private readonly long[] _lastNext;                 // per row: the argmax after its last token
    private readonly bool[] _lastStale;                // per row: _last was not copied back (CopyLogits off)

    public Generator(XLstmSession model, int batch = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batch);
        _model = model;
        _m = model.Manifest;
        if (_m.Input != StateNames.InputIds) throw new XLstmOnnxException($"{model.Directory}: generation needs an input_ids model; this one takes {_m.Input}.");
        _session = model.Session;
        Batch = batch;
        _vocab = (int)_m.VocabSize;
        _padId = _m.PadTokenId ?? 0;
        _cuda = model.Options.Device == ExecutionDevice.Cuda;
        _nextToken = _m.NextToken;
        _run = model.UncapturedRunOptions();
        int graph = model.Options.CudaGraph ? model.ReserveGraphIds(2) : 0; // one graph per state parity, ours alone
        _stepRun = model.Options.CudaGraph ? [XLstmSession.GraphRunOptions(graph), XLstmSession.GraphRunOptions(graph + 1)] : [_run, _run];
        int n = _m.NumLayers * 3;
        _past = new string[n];
        _present = new string[n];
        for (int l = 0; l < _m.NumLayers; l++)
        {
            for (int p = 0; p < 3; p++)
            {
                _past[l * 3 + p] = StateNames.Past(l, StateNames.Parts[p]);
                _present[l * 3 + p] = StateNames.Present(l, StateNames.Parts[p]);
            }
        }
        try
        {
            // the device allocator must outlive every tensor it allocated: owned here, released last in Dispose
            _deviceAllocator = model.Options.Device == ExecutionDevice.Cuda ? new OrtAllocator(_session, model.StateMemory) : null;
            var allocator = _deviceAllocator ?? OrtAllocator.DefaultInstance;
            for (int set = 0; set < 2; set++)
            {
                _state[set] = new OrtValue[n];
                for (int i = 0; i < n; i++) _state[set][i] = Own(OrtValue.CreateAllocatedTensorValue(allocator, TensorElementType.Float, Shape(i)));
            }
            _zeros = new OrtValue[n];
            for (int i = 0; i < n; i++) _zeros[i] = Own(OrtValue.CreateTensorValueFromMemory(new float[Count(Shape(i))], Shape(i)));
            _stepIds = new long[batch];
            _stepMask = new long[batch];
            _stepIdsValue = Own(OrtValue.CreateTensorValueFromMemory(_stepIds, [batch, 1]));
            _stepMaskValue = Own(OrtValue.CreateTensorValueFromMemory(_stepMask, [batch, 1]));
            _stepLogits = new float[batch * _vocab];
            _stepLogitsValue = Own(OrtValue.CreateTensorValueFromMemory(_stepLogits, [batch, 1, _vocab]));
            _stepNext = new long[batch];
            _stepNextValue = _nextToken ? Own(OrtValue.CreateTensorValueFromMemory(_stepNext, [batch, 1])) : null;
            if (_cuda)
            {
                _devIds = Own(OrtValue.CreateAllocatedTensorValue(allocator, TensorElementType.Int64, [batch, 1]));
                _devMask = Own(OrtValue.CreateAllocatedTensorValue(allocator, TensorElementType.Int64, [batch, 1]));
                _devLogits = Own(OrtValue.CreateAllocatedTensorValue(allocator, TensorElementType.Float, [batch, 1, _vocab]));
                _devNext = _nextToken ? Own(OrtValue.CreateAllocatedTensorValue(allocator, TensorElementType.Int64, [batch, 1])) : null;
                int device = model.Options.DeviceId;
                (_devIdsAt, _devMaskAt, _devLogitsAt) = (DeviceBuffer.Of(_devIds, device), DeviceBuffer.Of(_devMask, device), DeviceBuffer.Of(_devLogits, device));
                if (_devNext is not null) _devNextAt = DeviceBuffer.Of(_devNext, device);
            }
            for (int parity = 0; parity < 2; parity++)
            {
                _stepBinding[parity] = _cuda
                    ? Bind(_devIds!, _devMask!, _state[parity], _state[1 - parity], _devLogits!, _devNext)
                    : Bind(_stepIdsValue, _stepMaskValue, _state[parity], _state[1 - parity], _stepLogitsValue, _stepNextValue);
            }
            _last = new float[batch * _vocab];
            _lastNext = new long[batch];
            _lastStale = new bool[batch];
            _pending = new int?[batch];
            Reset();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public int Batch { get; }
    public ModelManifest Manifest => _m;
    public HfTokenizer? Tokenizer => _model.Tokenizer;

    /// <summary>The logits after the last token each row has read (valid after a prompt was fed).</summary>
    public ReadOnlySpan<float> LastLogits(int row) => _lastStale[row]
        ? throw new InvalidOperationException($"row {row}: its last logits stayed on the device (CopyLogits is off); use GreedyNext.")
        : _last.AsSpan(row * _vocab, _vocab);

    /// <summary>Whether the model computes the argmax on the device (exported with --next-token).</summary>
    public bool HasDeviceArgMax => _nextToken;

    /// <summary>
    /// Whether CUDA decode steps copy the logits back (default). Off, with a next_token model, a step copies only B
    /// ids and <see cref="LastLogits"/> throws for stepped rows until the next prompt; greedy decoding needs no more.
    /// </summary>
    public bool CopyLogits { get; set; } = true;

    /// <summary>The argmax of row <paramref name="row"/>'s last logits: from the device when the model has next_token.</summary>
    public int GreedyNext(int row) => _nextToken ? (int)_lastNext[row] : Sampler.ArgMax(LastLogits(row));

    /// <summary>Back to the zero state ("start"), forgetting pending tokens.</summary>
    public void Reset()
    {
        _pastOverride = _zeros;
        Array.Clear(_pending);
        Array.Clear(_last);
        Array.Clear(_lastNext);
        Array.Clear(_lastStale);
    }

    /// <summary>
    /// Feeds tokens to each row (a row may get none: its state and logits stay as they are). A sampled token that was not
    /// yet fed goes first. Long inputs are fed in segments of max_inference_chunksize, as HF does.
    /// </summary>
    public void Append(IReadOnlyList<IReadOnlyList<int>> tokens)
    {
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
        if (s == 1 && _pastOverride is null)
        {
            for (int r = 0; r < Batch; r++)
            {
                bool real = rows[r].Length == 1;
                _stepIds[r] = real ? rows[r][0] : _padId;
                _stepMask[r] = real ? 1 : 0;
            }
            RunStep();
            return;
        }
        long seg = Math.Max(1, _m.MaxInferenceChunksize);
        for (long a = 0; a < s; a += seg)
        {
            int w = (int)Math.Min(seg, s - a);
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
            bool all = _m.Logits == "all";
            float[] logits = all ? new float[Batch * w * _vocab] : _stepLogits;
            using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, [Batch, w]);
            using var maskValue = OrtValue.CreateTensorValueFromMemory(mask, [Batch, w]);
            using var logitsValue = all ? OrtValue.CreateTensorValueFromMemory(logits, [Batch, w, _vocab]) : null;
            using var binding = Bind(idsValue, maskValue, _pastOverride ?? _state[_cur], _state[1 - _cur], logitsValue ?? _stepLogitsValue, _stepNextValue);
            _session.RunWithBinding(_run, binding);
            binding.SynchronizeBoundOutputs();
            _pastOverride = null;
            _cur = 1 - _cur;
            int positions = all ? w : 1;
            for (int r = 0; r < Batch; r++)
            {
                if (mask[r * w + w - 1] != 1) continue;
                logits.AsSpan((r * positions + positions - 1) * _vocab, _vocab).CopyTo(_last.AsSpan(r * _vocab, _vocab));
                _lastStale[r] = false;
                if (_nextToken) _lastNext[r] = _stepNext[r];
            }
        }
    }

    /// <summary>One token per row from <see cref="_stepIds"/> and <see cref="_stepMask"/>, on the prebuilt bindings.</summary>
    private void RunStep()
    {
        if (_cuda)
        {
            // into the fixed device buffers the bindings (and any captured graph) read
            CudaRuntime.CopyToDevice<long>(_stepIds, _devIdsAt);
            if (_m.AttentionMask) CudaRuntime.CopyToDevice<long>(_stepMask, _devMaskAt);
        }
        _session.RunWithBinding(_stepRun[_cur], _stepBinding[_cur]);
        _stepBinding[_cur].SynchronizeBoundOutputs();
        _cur = 1 - _cur;
        bool logits = !_cuda || CopyLogits || !_nextToken;
        if (_cuda)
        {
            if (_nextToken) CudaRuntime.CopyToHost<long>(_devNextAt, _stepNext);
            if (logits) CudaRuntime.CopyToHost<float>(_devLogitsAt, _stepLogits);
        }
        for (int r = 0; r < Batch; r++)
        {
            if (_stepMask[r] != 1) continue;
            if (logits) _stepLogits.AsSpan(r * _vocab, _vocab).CopyTo(_last.AsSpan(r * _vocab, _vocab));
            _lastStale[r] = !logits;
            if (_nextToken) _lastNext[r] = _stepNext[r];
        }
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
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (options.StopStrings.Count > 0 && Tokenizer is null)
        {
            throw new XLstmOnnxException($"option --stop needs the model's tokenizer.json, which {_model.Directory} does not have.");
        }
        int sampleVocab = Math.Min(_vocab, Tokenizer?.Count ?? _vocab); // embeddings are often padded past the tokenizer
        var samplers = new Sampler[Batch];
        var stops = new HashSet<int>(options.StopTokenIds);
        if (!options.IgnoreEos && _m.EosTokenId is { } eos) stops.Add((int)eos);
        var outputs = new List<int>[Batch];
        var reasons = new StopReason[Batch];
        // text only when someone reads it or stop strings need it: a plain token loop allocates nothing per token
        var texts = Tokenizer is not null && (onToken is not null || options.StopStrings.Count > 0) ? new TextStopper[Batch] : null;
        for (int r = 0; r < Batch; r++)
        {
            samplers[r] = new Sampler(options, sampleVocab);
            if (_pending[r] is { } p) samplers[r].Observe(p);
            foreach (int t in prompts[r]) samplers[r].Observe(t);
            outputs[r] = new List<int>(options.MaxNewTokens);
            if (texts is not null) texts[r] = new TextStopper(Tokenizer!, options.StopStrings);
        }
        // plain greedy over the full vocabulary needs only the device's argmax: steps then copy B ids, not B·V logits
        bool deviceGreedy = _nextToken && options.Greedy && options.RepetitionPenalty == 1.0 && sampleVocab == _vocab;
        bool copyLogits = CopyLogits;
        CopyLogits = copyLogits && !deviceGreedy;
        try
        {
            return GenerateCore(prompts, options, onToken, samplers, stops, outputs, reasons, texts, deviceGreedy);
        }
        finally
        {
            CopyLogits = copyLogits;
        }
    }

    private GenerationResult GenerateCore(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions options, Action<int, int, string>? onToken,
        Sampler[] samplers, HashSet<int> stops, List<int>[] outputs, StopReason[] reasons, TextStopper[]? texts, bool deviceGreedy)
    {
        var clock = Stopwatch.StartNew();
        Append(prompts);
        bool anyInput = Enumerable.Range(0, Batch).Any(r => prompts[r].Count > 0);
        if (!anyInput && _pastOverride is not null) throw new XLstmOnnxException("Generate needs a prompt: the state is empty (after Reset) and no tokens were given.");
        TimeSpan ttft = TimeSpan.Zero, decodeStart = TimeSpan.Zero;
        int steps = 0;
        for (int step = 0; step < options.MaxNewTokens; step++)
        {
            bool active = false;
            for (int r = 0; r < Batch; r++)
            {
                if (reasons[r] != StopReason.None) continue;
                int token = deviceGreedy ? GreedyNext(r) : samplers[r].Next(LastLogits(r));
                samplers[r].Observe(token);
                outputs[r].Add(token);
                string text = texts?[r].Push(token) ?? "";
                if (stops.Contains(token)) reasons[r] = StopReason.StopToken;
                else if (texts?[r].Stopped == true) reasons[r] = StopReason.StopString;
                else if (outputs[r].Count >= options.MaxNewTokens) reasons[r] = StopReason.MaxNewTokens;
                if (reasons[r] != StopReason.None && texts is not null) text += texts[r].Finish();
                onToken?.Invoke(r, token, text);
                _stepIds[r] = token;
                _stepMask[r] = 1;
                if (reasons[r] != StopReason.None) _pending[r] = token;
                else active = true;
            }
            if (step == 0)
            {
                ttft = clock.Elapsed;
                decodeStart = clock.Elapsed;
            }
            if (!active) break;
            for (int r = 0; r < Batch; r++)
            {
                // a stopped row reads nothing more: its last token stays pending and its state untouched
                if (reasons[r] != StopReason.None) { _stepIds[r] = _padId; _stepMask[r] = 0; }
            }
            RunStep();
            steps++;
        }
        var decode = clock.Elapsed - decodeStart;
        return new GenerationResult(outputs.Select(o => o.ToArray()).ToArray(), reasons, ttft, decode, steps);
    }

    /// <summary>A host copy of the current state and pending tokens (restore it later, or save it to a file).</summary>
    public StateSnapshot Snapshot()
    {
        var source = _pastOverride ?? _state[_cur];
        var tensors = new float[source.Length][];
        for (int i = 0; i < source.Length; i++)
        {
            tensors[i] = new float[Count(Shape(i))];
            if (_model.Options.Device == ExecutionDevice.Cpu || ReferenceEquals(source, _pastOverride))
            {
                source[i].GetTensorDataAsSpan<float>().CopyTo(tensors[i]);
            }
            else
            {
                using var host = OrtValue.CreateTensorValueFromMemory(tensors[i], Shape(i));
                Copier.Copy(source[i], host);
            }
        }
        return new StateSnapshot(_m, Batch, tensors, _pending.Select(p => p is { } v ? new[] { v } : null).ToArray());
    }

    /// <summary>Continues from <paramref name="snapshot"/> (taken from this model with the same batch) on the next call.</summary>
    public void Restore(StateSnapshot snapshot)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        if (snapshot.Batch != Batch) throw new XLstmOnnxException($"state snapshot has batch {snapshot.Batch}; this generator has batch {Batch}.");
        if (snapshot.Manifest.NumLayers != _m.NumLayers || snapshot.Manifest.QkHeadDim != _m.QkHeadDim || snapshot.Manifest.VHeadDim != _m.VHeadDim || snapshot.Manifest.NumHeads != _m.NumHeads)
        {
            throw new XLstmOnnxException("state snapshot belongs to a model with other state dims.");
        }
        var values = new OrtValue[snapshot.Tensors.Length];
        for (int i = 0; i < values.Length; i++) values[i] = Own(OrtValue.CreateTensorValueFromMemory((float[])snapshot.Tensors[i].Clone(), Shape(i)));
        _pastOverride = values;
        for (int r = 0; r < Batch; r++) _pending[r] = snapshot.Pending[r] is { Length: > 0 } p ? p[0] : null;
        Array.Clear(_last);
        Array.Clear(_lastNext);
        Array.Clear(_lastStale);
    }

    /// <summary>One row's state (every layer's C, n, m) and its last logits, in host memory.</summary>
    public sealed record RowState(float[][] Tensors, float[] LastLogits)
    {
        /// <summary>Bytes held (for cache budgets).</summary>
        public long Bytes => Tensors.Sum(t => (long)t.Length * 4) + LastLogits.Length * 4L;
    }

    /// <summary>Sets row <paramref name="row"/> to the zero state (a fresh sequence); other rows are untouched.</summary>
    public void ResetRow(int row) => WriteRowCore(row, null, null);

    /// <summary>Copies row <paramref name="row"/>'s state and last logits to the host.</summary>
    public RowState ReadRow(int row)
    {
        Materialize();
        var tensors = new float[_state[_cur].Length][];
        for (int i = 0; i < tensors.Length; i++)
        {
            long n = RowElements(i);
            tensors[i] = new float[n];
            if (_model.Options.Device == ExecutionDevice.Cpu)
            {
                _state[_cur][i].GetTensorDataAsSpan<float>().Slice((int)(row * n), (int)n).CopyTo(tensors[i]);
            }
            else
            {
                using var view = RowView(_state[_cur][i], i, row);
                using var host = OrtValue.CreateTensorValueFromMemory(tensors[i], RowShape(i));
                Copier.Copy(view, host);
            }
        }
        return new RowState(tensors, LastLogits(row).ToArray());
    }

    /// <summary>Puts <paramref name="state"/> (from <see cref="ReadRow"/>, any row, this model) into row <paramref name="row"/>.</summary>
    public void WriteRow(int row, RowState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        WriteRowCore(row, state.Tensors, state.LastLogits);
    }

    private void WriteRowCore(int row, float[][]? tensors, float[]? logits)
    {
        if ((uint)row >= (uint)Batch) throw new ArgumentOutOfRangeException(nameof(row));
        Materialize();
        for (int i = 0; i < _state[_cur].Length; i++)
        {
            long n = RowElements(i);
            var source = tensors?[i] ?? new float[n];
            if (source.Length != n) throw new ArgumentException($"state tensor {i} has {source.Length} values; a row has {n}", nameof(tensors));
            if (_model.Options.Device == ExecutionDevice.Cpu)
            {
                source.CopyTo(_state[_cur][i].GetTensorMutableDataAsSpan<float>().Slice((int)(row * n), (int)n));
            }
            else
            {
                using var host = OrtValue.CreateTensorValueFromMemory(source, RowShape(i));
                using var view = RowView(_state[_cur][i], i, row);
                Copier.Copy(host, view);
            }
        }
        var last = _last.AsSpan(row * _vocab, _vocab);
        if (logits is null) last.Clear();
        else logits.CopyTo(last);
        _lastStale[row] = false;
        _lastNext[row] = logits is null ? 0 : Sampler.ArgMax(logits);
        _pending[row] = null;
    }

    /// <summary>Turns a pending host override (zeros after Reset, a restored snapshot) into the device state, so rows can be edited.</summary>
    private void Materialize()
    {
        if (_pastOverride is null) return;
        for (int i = 0; i < _pastOverride.Length; i++)
        {
            if (_model.Options.Device == ExecutionDevice.Cpu) _pastOverride[i].GetTensorDataAsSpan<float>().CopyTo(_state[_cur][i].GetTensorMutableDataAsSpan<float>());
            else Copier.Copy(_pastOverride[i], _state[_cur][i]);
        }
        _pastOverride = null;
    }

    private TensorCopier Copier => _copier ??= new TensorCopier(_model.Options);

    private long RowElements(int i) => Count(Shape(i)) / Batch;

    private long[] RowShape(int i) => [1, .. Shape(i)[1..]];

    /// <summary>A tensor over row <paramref name="row"/> of a device state tensor (no copy; valid while the tensor lives).</summary>
    private OrtValue RowView(OrtValue tensor, int i, int row)
    {
        long bytes = RowElements(i) * sizeof(float);
        var at = DeviceBuffer.Of(tensor, _model.Options.DeviceId);
        return OrtValue.CreateTensorValueWithData(_model.StateMemory, TensorElementType.Float, RowShape(i), at.Address + (nint)(row * bytes), bytes);
    }

    private OrtIoBinding Bind(OrtValue ids, OrtValue mask, OrtValue[] past, OrtValue[] present, OrtValue logits, OrtValue? next)
    {
        var b = _session.CreateIoBinding();
        b.BindInput(StateNames.InputIds, ids);
        if (_m.AttentionMask) b.BindInput(StateNames.AttentionMask, mask);
        for (int i = 0; i < past.Length; i++)
        {
            b.BindInput(_past[i], past[i]);
            b.BindOutput(_present[i], present[i]);
        }
        b.BindOutput(StateNames.Logits, logits);
        if (next is not null) b.BindOutput(StateNames.NextToken, next);
        return b;
    }

    private void CheckId(int t)
    {
        if (t < 0 || t >= _vocab) throw new XLstmOnnxException($"token id {t} is outside the model's vocabulary [0, {_vocab}).");
    }

    private long[] Shape(int i) => _m.StateShape(StateNames.Parts[i % 3], Batch);

    private static long Count(long[] shape) => shape.Aggregate(1L, (a, b) => a * b);

    private OrtValue Own(OrtValue v)
    {
        _owned.Add(v);
        return v;
    }

    public void Dispose()
    {
        foreach (var b in _stepBinding) b?.Dispose();
        foreach (var r in _stepRun ?? []) if (!ReferenceEquals(r, _run)) r?.Dispose();
        _run?.Dispose();
        foreach (var v in _owned) v.Dispose();
        _owned.Clear();
        _copier?.Dispose();
        _deviceAllocator?.Dispose();
    }
}
