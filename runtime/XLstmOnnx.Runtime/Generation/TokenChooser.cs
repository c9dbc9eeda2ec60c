using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using XLstmOnnx.Contract;

namespace XLstmOnnx.Runtime.Generation;

/// <summary>
/// Chooses the next token of rows [0, n) of a <see cref="StepRunner"/> from the logits it left in its fixed buffers, on
/// the model's device: plain greedy rows take the model's next_token (B ids come back, not B·V logits); any other mix
/// runs the exported sampler (<c>sampler.onnx</c>) over the batch on the same execution provider, so again only ids
/// come back (and, for rows that ask, their log-probabilities and the top ones). Per-row token counts for the penalties
/// (prompt and output for the repetition penalty, output only for the frequency and presence penalties) stay on the
/// device, double-buffered like the state. The logit bias is a dense [rows, V] buffer: a row's bias is written when a
/// sequence with one first chooses in that row (or a row that held one is cleared), so moving rows needs no bias copy,
/// and a step uploads nothing but the parameters. Owns the sampler session, its buffers and bindings.
/// </summary>
internal sealed class TokenChooser : IDisposable
{
    private sealed class Bound(OrtIoBinding binding, OrtValue[] views) : IDisposable
    {
        public OrtIoBinding Binding => binding;

        public void Dispose()
        {
            binding.Dispose();
            foreach (var v in views) v.Dispose();
        }
    }

    private readonly XLstmSession _model;
    private readonly StepRunner _runner;
    private readonly DeviceMemory _memory;
    private readonly int _sampleVocab;
    private readonly long _vocab;
    private readonly bool _deviceArgMax;
    private readonly long[] _ids;
    private readonly float[] _logits;           // one row, for host argmax
    private readonly double[] _params;          // [rows, ParamCount], host
    private readonly int _top;                  // top ids per row
    private readonly object?[] _biasOf;         // per row: the LogitBias dictionary its bias row holds (null: zeros)
    private float[]? _biasRow;                  // one dense bias row, host
    private InferenceSession? _sampler;
    private RunOptions? _run;
    private DeviceAllocation? _paramsDev, _nextDev, _logProbDev, _topIdsDev, _topLogProbsDev, _bias;
    private readonly DeviceAllocation?[] _counts = new DeviceAllocation?[2];
    private readonly DeviceAllocation?[] _outputCounts = new DeviceAllocation?[2];
    private OrtValue? _vocabLimit;
    private readonly Dictionary<(int Rows, int Set), Bound> _bound = [];
    private int _countsSet;

    public TokenChooser(XLstmSession model, StepRunner runner, DeviceMemory memory)
    {
        _model = model;
        _runner = runner;
        _memory = memory;
        _vocab = model.Manifest.VocabSize;
        // embeddings are often padded past the tokenizer: ids it cannot decode are never chosen
        _sampleVocab = (int)Math.Min(_vocab, model.Tokenizer?.Count ?? _vocab);
        _deviceArgMax = model.Manifest.NextToken && _sampleVocab == _vocab;
        _ids = new long[runner.Rows];
        _logits = new float[_vocab];
        _params = new double[runner.Rows * SamplerModel.ParamCount];
        _top = SamplerModel.TopCountFor(_vocab);
        _biasOf = new object?[runner.Rows];
        LogProbs = new float[runner.Rows];
        TopIds = new long[runner.Rows * _top];
        TopLogProbs = new float[runner.Rows * _top];
    }

    /// <summary>Raw log-probabilities of the last sampler run's tokens (rows it ran over).</summary>
    public float[] LogProbs { get; }

    /// <summary>Top ids per row in <see cref="TopIds"/> and <see cref="TopLogProbs"/> (SamplerModel.TopCount, or the vocabulary when smaller).</summary>
    public int TopCount => _top;

    /// <summary>[rows, TopCount]: the most likely ids of the last sampler run's rows that asked for top log-probabilities, most likely first.</summary>
    public long[] TopIds { get; }

    /// <summary>[rows, TopCount]: their log-probabilities.</summary>
    public float[] TopLogProbs { get; }

    /// <summary>
    /// The token chosen for a row whose logits hold a NaN or an infinity (the model's and the sampler's next_token say so,
    /// <see cref="GraphNames.NonFiniteToken"/>; the host argmax checks the row it copies): the caller ends that sequence.
    /// </summary>
    public const int NonFinite = (int)GraphNames.NonFiniteToken;

    /// <summary>The error that ends a sequence whose logits are not finite: row <paramref name="row"/>, after <paramref name="generated"/> tokens.</summary>
    public static XLstmOnnxException NonFiniteError(int row, int generated) => new(
        $"row {row}: the model's logits hold NaN or infinite values after {generated} generated token{(generated == 1 ? "" : "s")}, so no token can be "
        + "chosen; the sequence ends here. The weights or the loaded state are not finite (xlstm-onnx export refuses non-finite weights).");

    /// <summary>
    /// Chooses a token for every non-null decoder among rows [<paramref name="start"/>, start + <paramref name="n"/>) of
    /// <paramref name="rows"/> (indexed by row) into <paramref name="tokens"/> (same indexing; null rows are left). Draws
    /// each sampled row's random number once. A row whose logits are not all finite gets <see cref="NonFinite"/>.
    /// </summary>
    public void Choose(IReadOnlyList<SequenceDecoder?> rows, int start, int n, Span<int> tokens)
    {
        bool plain = true;
        for (int r = start; r < start + n; r++) plain &= rows[r] is not { PlainGreedy: false };
        if (plain && _deviceArgMax)
        {
            _runner.DownloadNext(start, _ids.AsSpan(start, n));
            for (int r = start; r < start + n; r++) if (rows[r] is not null) tokens[r] = (int)_ids[r];
            return;
        }
        if (plain)
        {
            for (int r = start; r < start + n; r++)
            {
                if (rows[r] is null) continue;
                _runner.DownloadLogits(r, _logits);
                tokens[r] = Sampler.AllFinite(_logits) ? Sampler.ArgMax(_logits.AsSpan(0, _sampleVocab)) : NonFinite;
            }
            return;
        }
        EnsureSampler();
        bool top = false, cleared = false;
        for (int r = start; r < start + n; r++)
        {
            var row = _params.AsSpan(r * SamplerModel.ParamCount, SamplerModel.ParamCount);
            if (rows[r] is { } d)
            {
                d.WriteParams(row);
                cleared |= WriteBias(r, d.Options.LogitBias);
                top |= d.Options.TopLogProbs > 0;
            }
            else
            {
                row.Clear();
                row[SamplerModel.Greedy] = 1; // a free row: any id will do
                row[SamplerModel.RepetitionPenalty] = 1;
                row[SamplerModel.InvTemperature] = 1;
                row[SamplerModel.TopP] = 1;
            }
        }
        if (cleared) _memory.Wait(); // bias rows are cleared asynchronously
        int p = SamplerModel.ParamCount;
        _memory.Upload<double>(_params.AsSpan(start * p, n * p), _paramsDev!.Address + start * p * 8);
        if (start == 0)
        {
            // the batch of a decode step: bound once per (rows, counts set), so a step allocates nothing
            if (!_bound.TryGetValue((n, _countsSet), out var b)) _bound[(n, _countsSet)] = b = Bind(start, n, _countsSet);
            Run(b);
        }
        else
        {
            using var b = Bind(start, n, _countsSet);
            Run(b);
        }
        if (start == 0)
        {
            _countsSet = 1 - _countsSet; // every row that counts was in the batch
        }
        else
        {
            // rows outside [start, start + n) keep their counts in this set: bring the updated ones back to it
            long v4 = _vocab * 4;
            _memory.Copy(_counts[_countsSet]!.Address + (nint)(start * v4), _counts[1 - _countsSet]!.Address + (nint)(start * v4), n * v4);
            _memory.Copy(_outputCounts[_countsSet]!.Address + (nint)(start * v4), _outputCounts[1 - _countsSet]!.Address + (nint)(start * v4), n * v4);
            _memory.Wait();
        }
        _memory.Download<long>(_nextDev!.Address + start * 8, _ids.AsSpan(start, n));
        _memory.Download<float>(_logProbDev!.Address + start * 4, LogProbs.AsSpan(start, n));
        if (top)
        {
            _memory.Download<long>(_topIdsDev!.Address + start * _top * 8, TopIds.AsSpan(start * _top, n * _top));
            _memory.Download<float>(_topLogProbsDev!.Address + start * _top * 4, TopLogProbs.AsSpan(start * _top, n * _top));
        }
        for (int r = start; r < start + n; r++) if (rows[r] is not null) tokens[r] = (int)_ids[r];
    }

    private void Run(Bound b)
    {
        _sampler!.RunWithBinding(_run!, b.Binding);
        b.Binding.SynchronizeBoundOutputs();
    }

    /// <summary>
    /// Sets row <paramref name="row"/>'s token counts to those of <paramref name="tokens"/> (its prompt), for the repetition
    /// penalty, and its output counts (frequency and presence penalties) to zero: a new sequence starts in the row.
    /// </summary>
    public void SetCounts(int row, ReadOnlySpan<int> tokens) => SetCounts(row, tokens, []);

    /// <summary>
    /// Sets row <paramref name="row"/>'s counts for a sequence that has read <paramref name="read"/> and generated
    /// <paramref name="generated"/> so far (tokens appended in the middle of a generation): the repetition penalty counts
    /// both, the frequency and presence penalties only the generated ones.
    /// </summary>
    public void SetCounts(int row, ReadOnlySpan<int> read, ReadOnlySpan<int> generated)
    {
        EnsureSampler();
        var counts = new float[_vocab];
        var output = new float[_vocab];
        foreach (int t in read) if ((uint)t < (uint)_vocab) counts[t]++;
        foreach (int t in generated)
        {
            if ((uint)t >= (uint)_vocab) continue;
            counts[t]++;
            output[t]++;
        }
        _memory.Upload<float>(counts, _counts[_countsSet]!.Address + (nint)(row * _vocab * 4));
        _memory.Upload<float>(output, _outputCounts[_countsSet]!.Address + (nint)(row * _vocab * 4));
        _memory.Wait();
    }

    /// <summary>Row <paramref name="row"/>'s token counts as the next sampler run reads them (all, and generated only); for inspection.</summary>
    internal (float[] All, float[] Generated) ReadCounts(int row)
    {
        var all = new float[_vocab];
        var generated = new float[_vocab];
        if (_counts[_countsSet] is { } c)
        {
            _memory.Download<float>(c.Address + (nint)(row * _vocab * 4), all);
            _memory.Download<float>(_outputCounts[_countsSet]!.Address + (nint)(row * _vocab * 4), generated);
        }
        return (all, generated);
    }

    /// <summary>Moves row <paramref name="from"/>'s counts (both kinds) to row <paramref name="to"/> (a row that moves in the pool).</summary>
    public void MoveCounts(int from, int to)
    {
        if (_counts[_countsSet] is not { } c) return;
        var o = _outputCounts[_countsSet]!;
        _memory.Copy(c.Address + (nint)(to * _vocab * 4), c.Address + (nint)(from * _vocab * 4), _vocab * 4);
        _memory.Copy(o.Address + (nint)(to * _vocab * 4), o.Address + (nint)(from * _vocab * 4), _vocab * 4);
        _memory.Wait();
    }

    /// <summary>
    /// Makes row <paramref name="row"/>'s dense bias hold <paramref name="bias"/> (null or empty: zeros), when it holds
    /// something else; true when it started an asynchronous clear (wait before the run).
    /// </summary>
    private bool WriteBias(int row, IReadOnlyDictionary<int, float>? bias)
    {
        object? want = bias is { Count: > 0 } ? bias : null;
        if (ReferenceEquals(_biasOf[row], want)) return false;
        nint at = _bias!.Address + (nint)(row * _vocab * 4);
        if (want is null)
        {
            _memory.Zero(at, _vocab * 4);
        }
        else
        {
            var dense = _biasRow ??= new float[_vocab];
            Array.Clear(dense);
            foreach (var (id, b) in bias!) if ((uint)id < (uint)_vocab) dense[id] = b;
            _memory.Upload<float>(dense, at);
        }
        _biasOf[row] = want;
        return want is null;
    }

    private void EnsureSampler()
    {
        if (_sampler is not null) return;
        var m = _model.Manifest;
        if (m.SamplerFile is null || m.SamplerVersion != SamplerModel.Version)
        {
            throw new XLstmOnnxException($"{_model.Directory}: sampling needs {SamplerModel.FileName} version {SamplerModel.Version} beside the model "
                + $"(field '{ModelManifest.Field(nameof(ModelManifest.SamplerFile))}' of {ModelManifest.FileName} is {(m.SamplerFile is null ? "null" : $"\"{m.SamplerFile}\" version {m.SamplerVersion}")}); re-export the model.");
        }
        string path = Path.Combine(_model.Directory, m.SamplerFile);
        if (!File.Exists(path)) throw new XLstmOnnxException($"{_model.Directory}: {m.SamplerFile} named by {ModelManifest.FileName} is missing; re-export the model.");
        using var so = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
        if (_model.Options.Device == ExecutionDevice.Cuda) XLstmSession.AppendCuda(so, _model.Options.DeviceId);
        if (_model.Options.Threads > 0) so.IntraOpNumThreads = _model.Options.Threads;
        _sampler = new InferenceSession(path, so);
        _run = new RunOptions();
        int rows = _runner.Rows;
        _paramsDev = _memory.Allocate(rows * SamplerModel.ParamCount * 8L, "sampler parameters");
        _nextDev = _memory.Allocate(rows * 8L, "sampled ids");
        _logProbDev = _memory.Allocate(rows * 4L, "sampled log-probabilities");
        _topIdsDev = _memory.Allocate(rows * _top * 8L, "top ids");
        _topLogProbsDev = _memory.Allocate(rows * _top * 4L, "top log-probabilities");
        for (int s = 0; s < 2; s++)
        {
            _counts[s] = _memory.Allocate(rows * _vocab * 4, "token counts for the repetition penalty");
            _outputCounts[s] = _memory.Allocate(rows * _vocab * 4, "output token counts for the frequency and presence penalties");
            // rows that never had counts set are read by rows without penalties: keep them finite
            _memory.Zero(_counts[s]!.Address, rows * _vocab * 4);
            _memory.Zero(_outputCounts[s]!.Address, rows * _vocab * 4);
        }
        _bias = _memory.Allocate(rows * _vocab * 4, "logit bias");
        _memory.Zero(_bias.Address, rows * _vocab * 4);
        _memory.Wait();
        _vocabLimit = OrtValue.CreateTensorValueFromMemory(new long[] { _sampleVocab }, [1]);
    }

    private Bound Bind(int start, int n, int set)
    {
        long v4 = _vocab * 4;
        var logits = _runner.LogitsView(start, n);
        var param = _memory.View(_paramsDev!.Address + start * SamplerModel.ParamCount * 8, TensorElementType.Double, [n, SamplerModel.ParamCount], n * SamplerModel.ParamCount * 8L);
        var counts = _memory.View(_counts[set]!.Address + (nint)(start * v4), TensorElementType.Float, [n, _vocab], n * v4);
        var countsOut = _memory.View(_counts[1 - set]!.Address + (nint)(start * v4), TensorElementType.Float, [n, _vocab], n * v4);
        var outputCounts = _memory.View(_outputCounts[set]!.Address + (nint)(start * v4), TensorElementType.Float, [n, _vocab], n * v4);
        var outputCountsOut = _memory.View(_outputCounts[1 - set]!.Address + (nint)(start * v4), TensorElementType.Float, [n, _vocab], n * v4);
        var bias = _memory.View(_bias!.Address + (nint)(start * v4), TensorElementType.Float, [n, _vocab], n * v4);
        var topIds = _memory.View(_topIdsDev!.Address + start * _top * 8, TensorElementType.Int64, [n, _top], n * _top * 8L);
        var topLogProbs = _memory.View(_topLogProbsDev!.Address + start * _top * 4, TensorElementType.Float, [n, _top], n * _top * 4L);
        var next = _memory.View(_nextDev!.Address + start * 8, TensorElementType.Int64, [n, 1], n * 8L);
        var logProb = _memory.View(_logProbDev!.Address + start * 4, TensorElementType.Float, [n, 1], n * 4L);
        var b = _sampler!.CreateIoBinding();
        b.BindInput(SamplerModel.Logits, logits);
        b.BindInput(SamplerModel.Params, param);
        b.BindInput(SamplerModel.Counts, counts);
        b.BindInput(SamplerModel.OutputCounts, outputCounts);
        b.BindInput(SamplerModel.Bias, bias);
        b.BindInput(SamplerModel.VocabLimit, _vocabLimit!);
        b.BindOutput(SamplerModel.NextToken, next);
        b.BindOutput(SamplerModel.LogProb, logProb);
        b.BindOutput(SamplerModel.CountsOut, countsOut);
        b.BindOutput(SamplerModel.OutputCountsOut, outputCountsOut);
        b.BindOutput(SamplerModel.TopIds, topIds);
        b.BindOutput(SamplerModel.TopLogProbs, topLogProbs);
        return new Bound(b, [logits, param, counts, countsOut, outputCounts, outputCountsOut, bias, next, logProb, topIds, topLogProbs]);
    }

    public void Dispose()
    {
        foreach (var b in _bound.Values) b.Dispose();
        _bound.Clear();
        _sampler?.Dispose();
        _run?.Dispose();
        _vocabLimit?.Dispose();
        _paramsDev?.Dispose();
        _nextDev?.Dispose();
        _logProbDev?.Dispose();
        _topIdsDev?.Dispose();
        _topLogProbsDev?.Dispose();
        _bias?.Dispose();
        foreach (var c in _counts) c?.Dispose();
        foreach (var c in _outputCounts) c?.Dispose();
    }
}
