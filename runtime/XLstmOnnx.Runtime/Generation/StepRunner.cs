using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using XLstmOnnx.Contract;

namespace XLstmOnnx.Runtime.Generation;

/// <summary>
/// The graph contract, bound in one place: input_ids, attention_mask and past_state.* in; logits, next_token and
/// present_state.* out. Every runtime call of an exported model (decode steps, prompts, host runs for verify and score)
/// binds its values through <see cref="Bind"/>.
/// </summary>
internal sealed class ModelIo(ModelManifest manifest)
{
    private readonly string[] _past = manifest.State.PastNames();
    private readonly string[] _present = manifest.State.PresentNames();

    public ModelManifest Manifest => manifest;

    /// <summary>The state input names in <see cref="StateLayout"/>'s layer-major order (the pool's tensor order).</summary>
    public IReadOnlyList<string> Past => _past;

    /// <summary>The state output names, in the same order as <see cref="Past"/>.</summary>
    public IReadOnlyList<string> Present => _present;

    /// <summary>Binds one call. <paramref name="mask"/> is ignored by models without attention_mask; <paramref name="next"/> may be null.</summary>
    public void Bind(OrtIoBinding b, OrtValue input, OrtValue? mask, IReadOnlyList<OrtValue> past, IReadOnlyList<OrtValue> present, OrtValue? logits, OrtValue? next)
    {
        b.BindInput(manifest.Input, input);
        if (manifest.AttentionMask)
        {
            b.BindInput(GraphNames.AttentionMask, mask ?? throw new ArgumentNullException(nameof(mask), "the model takes attention_mask"));
        }
        for (int i = 0; i < _past.Length; i++)
        {
            b.BindInput(_past[i], past[i]);
            b.BindOutput(_present[i], present[i]);
        }
        if (logits is not null) b.BindOutput(GraphNames.Logits, logits);
        if (next is not null && manifest.NextToken) b.BindOutput(GraphNames.NextToken, next);
    }

    /// <summary>The mixed graph's inputs: the decode lane's (the plain graph's names), then the prompt lane's (<see cref="GraphNames.PromptPrefix"/>).</summary>
    public IReadOnlyList<string> MixedInputs()
    {
        string[] lane = [GraphNames.InputIds, GraphNames.AttentionMask, .. _past];
        return [.. lane, .. lane.Select(GraphNames.Prompt)];
    }

    /// <summary>
    /// Binds one call of the mixed graph: the decode lane (ids and mask [B, 1], its state) like <see cref="Bind"/>, the
    /// prompt lane (ids and mask [P, L], its state) under the prompt names; logits [B + P, 1, V] and next_token [B + P, 1]
    /// cover both lanes' rows, decode rows first.
    /// </summary>
    public void BindMixed(OrtIoBinding b, OrtValue ids, OrtValue mask, IReadOnlyList<OrtValue> past, IReadOnlyList<OrtValue> present,
        OrtValue promptIds, OrtValue promptMask, IReadOnlyList<OrtValue> promptPast, IReadOnlyList<OrtValue> promptPresent, OrtValue logits, OrtValue? next)
    {
        Bind(b, ids, mask, past, present, logits, next);
        b.BindInput(GraphNames.Prompt(GraphNames.InputIds), promptIds);
        b.BindInput(GraphNames.Prompt(GraphNames.AttentionMask), promptMask);
        for (int i = 0; i < _past.Length; i++)
        {
            b.BindInput(GraphNames.Prompt(_past[i]), promptPast[i]);
            b.BindOutput(GraphNames.Prompt(_present[i]), promptPresent[i]);
        }
    }
}

/// <summary>
/// Runs an exported model over rows of a <see cref="StatePool"/>: decode steps (one token a row, from fixed buffers, each
/// batch size with its own bindings and, with CUDA graphs, its own two captured graphs, one per state set) and prompt
/// pieces (any length, never captured). Logits and next_token land in fixed buffers of <see cref="Rows"/> rows, where
/// the token chooser reads them. Owns its buffers, bindings and run options.
/// </summary>
internal sealed class StepRunner : IDisposable
{
    private sealed class Step(OrtIoBinding binding, RunOptions run, OrtValue[] views) : IDisposable
    {
        public OrtIoBinding Binding => binding;
        public RunOptions Run => run;

        public void Dispose()
        {
            binding.Dispose();
            run.Dispose();
            foreach (var v in views) v.Dispose();
        }
    }

    private readonly XLstmSession _model;
    private readonly ModelManifest _m;
    private readonly ModelIo _io;
    private readonly DeviceMemory _memory;
    private readonly StatePool _pool;
    private readonly DeviceAllocation _ids, _mask, _logits, _next;
    private readonly Dictionary<(int Rows, int Set), Step> _steps = [];
    private readonly Dictionary<MixedKey, Step> _mixed = [];
    private readonly DeviceAllocation? _promptIds, _promptMask;   // the mixed calls' prompt ids and mask
    private readonly int _promptCapacity;
    private readonly long _vocab;

    /// <param name="model">The session.</param>
    /// <param name="memory">The session's device memory.</param>
    /// <param name="pool">The pool whose rows [0, n) decode steps run over (double-buffered).</param>
    /// <param name="promptRows">Output rows beyond the pool's for the prompt rows of a mixed call (<see cref="DecodeWithPrompt"/>).</param>
    /// <param name="promptTokens">Prompt tokens a mixed call takes at most (all its prompt rows together).</param>
    public StepRunner(XLstmSession model, DeviceMemory memory, StatePool pool, int promptRows = 0, int promptTokens = 0)
    {
        if (model.Manifest.Input != GraphNames.InputIds) throw new XLstmOnnxException($"{model.Directory}: generation needs an input_ids model; this one takes {model.Manifest.Input}.");
        if (pool.Sets != 2) throw new ArgumentException("decode steps need a double-buffered pool", nameof(pool));
        _model = model;
        _m = model.Manifest;
        _io = model.Io;
        _memory = memory;
        _pool = pool;
        _vocab = _m.VocabSize;
        Rows = pool.Rows;
        OutputRows = Rows + promptRows;
        Ids = new long[Rows];
        Mask = new long[Rows];
        try
        {
            _ids = memory.Allocate(Rows * 8L, "decode input ids");
            _mask = memory.Allocate(Rows * 8L, "decode attention mask");
            _logits = memory.Allocate(OutputRows * _vocab * 4, "decode logits");
            _next = memory.Allocate(OutputRows * 8L, "decode next_token");
            _promptCapacity = promptRows > 0 ? promptTokens : 0;
            if (_promptCapacity > 0)
            {
                _promptIds = memory.Allocate(_promptCapacity * 8L, "mixed-call prompt ids");
                _promptMask = memory.Allocate(_promptCapacity * 8L, "mixed-call prompt mask");
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Rows of the fixed input buffers (the pool's rows).</summary>
    public int Rows { get; }

    /// <summary>Rows of the logits and next_token buffers: the pool's, and the prompt rows a mixed call may add.</summary>
    public int OutputRows { get; }

    /// <summary>The token each row reads at the next <see cref="Decode"/>.</summary>
    public long[] Ids { get; }

    /// <summary>1 where a row reads its token at the next <see cref="Decode"/>, 0 where the row is left as it is.</summary>
    public long[] Mask { get; }

    public long Vocab => _vocab;

    /// <summary>Where row <paramref name="row"/>'s last logits are (float [V], device memory).</summary>
    public IntPtr LogitsAt(int row) => _logits.Address + (nint)(row * _vocab * 4);

    /// <summary>Where row <paramref name="row"/>'s next_token is (int64, device memory).</summary>
    public IntPtr NextAt(int row) => _next.Address + row * 8;

    /// <summary>A tensor [count, 1, V] over the logits of rows [start, start + count); the caller disposes it.</summary>
    public OrtValue LogitsView(int start, int count) => _memory.View(LogitsAt(start), TensorElementType.Float, [count, 1, _vocab], count * _vocab * 4);

    /// <summary>Copies the next_token of rows [start, start + count) to the host (models exported with --next-token).</summary>
    public void DownloadNext(int start, Span<long> next) => _memory.Download(_next.Address + start * 8, next);

    /// <summary>Copies row <paramref name="row"/>'s last logits to the host.</summary>
    public void DownloadLogits(int row, Span<float> logits) => _memory.Download(LogitsAt(row), logits[..(int)_vocab]);

    /// <summary>Copies row <paramref name="from"/>'s logits and next_token to row <paramref name="to"/> (rows that move).</summary>
    public void CopyOutputs(int from, int to)
    {
        _memory.Copy(LogitsAt(to), LogitsAt(from), _vocab * 4);
        _memory.Copy(_next.Address + to * 8, _next.Address + from * 8, 8);
        _memory.Wait();
    }

    /// <summary>
    /// One token for each of pool rows [0, <paramref name="rows"/>) from <see cref="Ids"/> and <see cref="Mask"/>: reads
    /// state set <paramref name="set"/>, writes set 1 − set (the caller flips its parity). Rows with mask 0 keep their
    /// state (their logits are not meaningful). Allocates nothing after the first call for a (rows, set).
    /// </summary>
    public void Decode(int rows, int set)
    {
        if (rows < 1 || rows > Rows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"1 to {Rows} rows");
        if (!_steps.TryGetValue((rows, set), out var step)) _steps[(rows, set)] = step = MakeStep(rows, set);
        RunStep(_model.Session, step, rows);
    }

    /// <summary>Uploads the decode rows' <see cref="Ids"/> and <see cref="Mask"/>, runs <paramref name="step"/> and waits for its outputs.</summary>
    private void RunStep(InferenceSession session, Step step, int rows)
    {
        _memory.Upload<long>(Ids.AsSpan(0, rows), _ids.Address);
        if (_m.AttentionMask) _memory.Upload<long>(Mask.AsSpan(0, rows), _mask.Address);
        session.RunWithBinding(step.Run, step.Binding);
        step.Binding.SynchronizeBoundOutputs();
    }

    /// <summary>An int64 tensor [rows, cols] over device memory at <paramref name="at"/>; the caller disposes it.</summary>
    private OrtValue Int64View(IntPtr at, long rows, long cols) => _memory.View(at, TensorElementType.Int64, [rows, cols], rows * cols * 8L);

    /// <summary>
    /// The decode rows' tensors: ids and mask [rows, 1] over the fixed buffers, logits and next_token of output rows
    /// [0, <paramref name="outputs"/>), pool rows [0, rows) of set <paramref name="set"/> (past) and 1 − set (present).
    /// </summary>
    private (OrtValue Ids, OrtValue Mask, OrtValue Logits, OrtValue Next, OrtValue[] Past, OrtValue[] Present) DecodeViews(int rows, int set, int outputs) =>
        (Int64View(_ids.Address, rows, 1), Int64View(_mask.Address, rows, 1), LogitsView(0, outputs), Int64View(_next.Address, outputs, 1),
            _pool.Views(set, 0, rows), _pool.Views(1 - set, 0, rows));

    private Step MakeStep(int rows, int set)
    {
        var (ids, mask, logits, next, past, present) = DecodeViews(rows, set, rows);
        OrtValue[] views = [ids, mask, logits, next, .. past, .. present];
        var binding = _model.Session.CreateIoBinding();
        _io.Bind(binding, ids, mask, past, present, logits, next);
        // a captured graph replays over the buffers it was captured with: one graph per (rows, set), ours alone
        var run = _model.Options.CudaGraph ? XLstmSession.GraphRunOptions(_model.ReserveGraphIds(1)) : _model.UncapturedRunOptions();
        return new Step(binding, run, views);
    }

    /// <summary>
    /// Reads <paramref name="seq"/> tokens into each of rows [<paramref name="start"/>, start + <paramref name="count"/>)
    /// of <paramref name="pool"/> (set <paramref name="set"/> in, set 1 − set out), never captured. <paramref name="ids"/>
    /// and <paramref name="mask"/> are [count, seq] (a masked position leaves its row's state untouched). The last
    /// position's logits (and next_token) land in output rows [<paramref name="outRow"/>, outRow + count).
    /// </summary>
    public void Prompt(StatePool pool, int set, int start, int count, long[] ids, long[] mask, int seq, int outRow)
    {
        if (ids.Length != count * seq || mask.Length != count * seq) throw new ArgumentException($"ids and mask must hold {count}×{seq} values");
        if (outRow < 0 || outRow + count > OutputRows) throw new ArgumentOutOfRangeException(nameof(outRow), outRow, $"output rows [{outRow}, {outRow + count}) of {OutputRows}");
        var past = pool.Views(set, start, count);
        var present = pool.Views(1 - set, start, count);
        using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, [count, seq]);
        using var maskValue = OrtValue.CreateTensorValueFromMemory(mask, [count, seq]);
        bool all = _m.Logits == LogitsOutput.All;
        using var logits = all ? null : LogitsView(outRow, count);
        using var next = Int64View(_next.Address + outRow * 8, count, 1);
        using var run = _model.UncapturedRunOptions();
        using var binding = _model.Session.CreateIoBinding();
        try
        {
            _io.Bind(binding, idsValue, maskValue, past, present, logits, next);
            if (all) binding.BindOutputToDevice(GraphNames.Logits, _memory.Info); // [count, seq, V], made by ONNX Runtime
            _model.Session.RunWithBinding(run, binding);
            binding.SynchronizeBoundOutputs();
            if (all)
            {
                using var outputs = binding.GetOutputValues();
                var full = outputs[Array.IndexOf(binding.GetOutputNames(), GraphNames.Logits)];
                long row = _vocab * 4;
                IntPtr at = DeviceBuffer.Of(full, _model.Options.DeviceId).Address;
                _memory.Copy2D(LogitsAt(outRow), row, at + (nint)((seq - 1) * row), seq * row, row, count);
                _memory.Wait();
            }
        }
        finally
        {
            foreach (var v in past) v.Dispose();
            foreach (var v in present) v.Dispose();
        }
    }

    /// <summary>The rows, state sets and prompt shape of one mixed call: each has its own bindings and captured graph.</summary>
    private readonly record struct MixedKey(int Rows, int Set, StatePool Prompt, int PromptSet, int Start, int Count, int Seq);

    /// <summary>
    /// One call of the mixed graph: a decode step for pool rows [0, <paramref name="rows"/>) from <see cref="Ids"/> and
    /// <see cref="Mask"/> (as <see cref="Decode"/>: set <paramref name="set"/> in, 1 − set out), and <paramref name="seq"/>
    /// tokens into each of rows [<paramref name="start"/>, start + <paramref name="count"/>) of <paramref name="promptPool"/>
    /// (set <paramref name="promptSet"/> in, 1 − promptSet out; ids and mask [count, seq] as in <see cref="Prompt"/>). One
    /// pass over the weights for both. The decode rows' logits and next_token land in output rows [0, rows), the prompt
    /// rows' in [rows, rows + count). Each (rows, set, prompt rows, seq) has its own bindings over fixed buffers and,
    /// with CUDA graphs, its own captured graph: callers keep the prompt shapes to a few (the serving engine's pieces).
    /// </summary>
    public void DecodeWithPrompt(int rows, int set, StatePool promptPool, int promptSet, int start, int count, long[] ids, long[] mask, int seq)
    {
        if (rows < 1 || rows > Rows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"1 to {Rows} rows");
        if (ids.Length != count * seq || mask.Length != count * seq) throw new ArgumentException($"ids and mask must hold {count}×{seq} values");
        if (rows + count > OutputRows) throw new ArgumentOutOfRangeException(nameof(count), count, $"output rows [0, {rows + count}) of {OutputRows}");
        if (count * seq > _promptCapacity) throw new ArgumentOutOfRangeException(nameof(seq), seq, $"{count}×{seq} prompt tokens; the runner holds {_promptCapacity}");
        if (ReferenceEquals(promptPool, _pool)) throw new ArgumentException("the prompt rows must be in another pool than the decode rows", nameof(promptPool));
        var key = new MixedKey(rows, set, promptPool, promptSet, start, count, seq);
        if (!_mixed.TryGetValue(key, out var step)) _mixed[key] = step = MakeMixedStep(key);
        _memory.Upload<long>(ids, _promptIds!.Address);
        _memory.Upload<long>(mask, _promptMask!.Address);
        RunStep(_model.MixedSession, step, rows);
    }

    private Step MakeMixedStep(MixedKey k)
    {
        var session = _model.MixedSession;
        var (ids, mask, logits, next, past, present) = DecodeViews(k.Rows, k.Set, k.Rows + k.Count);
        var promptIds = Int64View(_promptIds!.Address, k.Count, k.Seq);
        var promptMask = Int64View(_promptMask!.Address, k.Count, k.Seq);
        var promptPast = k.Prompt.Views(k.PromptSet, k.Start, k.Count);
        var promptPresent = k.Prompt.Views(1 - k.PromptSet, k.Start, k.Count);
        OrtValue[] views = [ids, mask, promptIds, promptMask, logits, next, .. past, .. present, .. promptPast, .. promptPresent];
        var binding = session.CreateIoBinding();
        _io.BindMixed(binding, ids, mask, past, present, promptIds, promptMask, promptPast, promptPresent, logits, next);
        var run = _model.MixedCaptured ? XLstmSession.GraphRunOptions(_model.ReserveMixedGraphIds(1)) : new RunOptions();
        return new Step(binding, run, views);
    }

    public void Dispose()
    {
        foreach (var s in _steps.Values) s.Dispose();
        _steps.Clear();
        foreach (var s in _mixed.Values) s.Dispose();
        _mixed.Clear();
        _promptIds?.Dispose();
        _promptMask?.Dispose();
        _ids?.Dispose();
        _mask?.Dispose();
        _logits?.Dispose();
        _next?.Dispose();
    }
}
