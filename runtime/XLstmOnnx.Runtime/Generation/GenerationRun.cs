using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Threading.Tasks.Sources;

namespace XLstmOnnx.Runtime.Generation;

/// <summary>One chosen token of one row, as a step of generation delivers it.</summary>
/// <param name="Row">The row of the generator's batch (0 for a batch of one).</param>
/// <param name="Token">The token id.</param>
/// <param name="Text">
/// The text this token makes safe to show: nothing of a stop string, and no half of a character split over tokens (it
/// comes with the token that completes it); the row's last token also carries what was held back. Empty without a
/// tokenizer or when text was not asked for.
/// </param>
/// <param name="Finish">Why the row stopped at this token; <see cref="StopReason.None"/> while it goes on.</param>
public readonly record struct GeneratedToken(int Row, int Token, string Text, StopReason Finish)
{
    /// <summary>Whether this is the row's last token.</summary>
    public bool IsLast => Finish != StopReason.None;
}

/// <summary>
/// Generation driven one step at a time by the caller (<see cref="Generator.Start"/>): each <see cref="Step"/> chooses
/// the next token of every row still generating; between steps the caller may look at the tokens, stop (dispose the run,
/// or just stop stepping), or <see cref="Append(IReadOnlyList{IReadOnlyList{int}})"/> tokens of its own (a tool's output)
/// that the rows read before their next token. A chosen token stays pending in the generator until the next step feeds
/// it, so wherever the run stops, the generator's state and pending tokens are those of the tokens delivered: a
/// <see cref="Generator.Snapshot"/> taken then, restored later, continues exactly. <see cref="Generator.Generate"/> is
/// this loop run to the end. Holds no native memory; disposing it only ends it.
/// </summary>
public sealed class GenerationRun : IDisposable
{
    private readonly Generator _g;
    private readonly SequenceDecoder?[] _decoders;     // per row; null once the row has stopped
    private readonly List<int>[] _outputs;
    private readonly StopReason[] _reasons;
    private readonly GeneratedToken[] _tokens;         // the last step's tokens, rows that took part only
    private readonly int[] _chosen;
    private readonly List<int>[]? _counted;            // per row, what the repetition penalty counts besides the outputs
    private readonly Stopwatch _clock;
    private TimeSpan _firstToken, _lastToken;
    private int _active, _steps, _delivered;
    private bool _ended;

    internal GenerationRun(Generator generator, GenerationOptions options, SequenceDecoder?[] decoders, int[][]? counted, Stopwatch clock)
    {
        _g = generator;
        Options = options;
        _decoders = decoders;
        _clock = clock;
        Batch = decoders.Length;
        _outputs = new List<int>[Batch];
        for (int r = 0; r < Batch; r++) _outputs[r] = new List<int>(options.MaxNewTokens);
        _reasons = new StopReason[Batch];
        _tokens = new GeneratedToken[Batch];
        _chosen = new int[Batch];
        _counted = counted?.Select(c => new List<int>(c)).ToArray();
        // no token to generate: every row is done before it starts (StopReason.None, as Generate has always reported)
        _active = options.MaxNewTokens > 0 ? Batch : 0;
        if (_active == 0) Array.Clear(_decoders);
    }

    /// <summary>Rows of the run: the generator's batch.</summary>
    public int Batch { get; }

    /// <summary>The settings the run was started with.</summary>
    public GenerationOptions Options { get; }

    /// <summary>Every row has stopped: <see cref="Step"/> returns false.</summary>
    public bool IsFinished => _active == 0;

    /// <summary>
    /// Chooses the next token of every row still generating (first feeding each its previous token). Allocates nothing on
    /// the managed heap when the run decodes no text (<c>decodeText: false</c>, or a model without tokenizer.json) and
    /// has no stop strings.
    /// </summary>
    /// <param name="tokens">
    /// The step's tokens, one per row that was still generating, in row order; valid until the next call. Empty when the
    /// method returns false.
    /// </param>
    /// <returns>False, with nothing run, once every row has stopped.</returns>
    /// <exception cref="InvalidOperationException">The run was ended: disposed, or the generator moved on (Append, Generate, Start, Reset, Restore).</exception>
    public bool Step(out ReadOnlySpan<GeneratedToken> tokens)
    {
        CheckLive();
        tokens = default;
        if (_active == 0) return false;
        // the previous step's tokens are pending (unless an Append has fed them): the rows read them now
        bool feed = false;
        for (int r = 0; r < Batch; r++) feed |= _decoders[r] is not null && _g.HasPending(r);
        if (feed)
        {
            _g.FeedPending(_decoders);
            _steps++;
        }
        _g.Choose(_decoders, _chosen);
        int n = 0;
        for (int r = 0; r < Batch; r++)
        {
            if (_decoders[r] is not { } d) continue;
            int token = _chosen[r];
            if (token == TokenChooser.NonFinite) throw TokenChooser.NonFiniteError(r, d.Generated);
            _outputs[r].Add(token);
            var (text, finish) = d.Accept(token);
            _g.SetPending(r, token);
            if (finish != StopReason.None)
            {
                // a stopped row reads nothing more: its last token stays pending and its state as it is
                _reasons[r] = finish;
                _decoders[r] = null;
                _active--;
            }
            _tokens[n++] = new GeneratedToken(r, token, text, finish);
        }
        if (_delivered++ == 0) _firstToken = _clock.Elapsed;
        _lastToken = _clock.Elapsed;
        tokens = _tokens.AsSpan(0, n);
        return true;
    }

    /// <summary>
    /// Feeds <paramref name="tokens"/> (one list per row, any of them empty) to the rows now, after the tokens they have
    /// chosen, as if the model had read them there: the next <see cref="Step"/> continues from them, with what is left of
    /// <see cref="GenerationOptions.MaxNewTokens"/>, the same random draws and the same stops. The result equals reading
    /// the whole sequence at once (prompt, chosen tokens, appended tokens) and generating from there. The repetition
    /// penalty counts appended tokens as it counts the prompt. Appended tokens are not part of the generated text: stop
    /// strings are matched in the generated text only. A row that has stopped reads its tokens too and stays stopped.
    /// </summary>
    /// <param name="tokens">One token list per row.</param>
    /// <exception cref="XLstmOnnxException">
    /// A row still generating would have nothing to read while others read (before the first step, when it has no chosen
    /// token yet): its next token would have no logits to come from.
    /// </exception>
    public void Append(IReadOnlyList<IReadOnlyList<int>> tokens)
    {
        CheckLive();
        const string parameter = "GenerationRun.Append(tokens)";
        _g.CheckRows(tokens, parameter);
        bool any = false;
        for (int r = 0; r < Batch; r++) any |= tokens[r].Count > 0 || _g.HasPending(r);
        if (!any) return;
        for (int r = 0; r < Batch; r++)
        {
            if (_decoders[r] is not null && tokens[r].Count == 0 && !_g.HasPending(r))
            {
                throw XLstmOnnxException.InParameter(parameter,
                    $"{parameter}: row {r} is still generating and has no token to read (before the first step); give every generating row at least one token, or none to all.");
            }
        }
        if (_counted is not null)
        {
            for (int r = 0; r < Batch; r++)
            {
                if (_decoders[r] is null || tokens[r].Count == 0) continue;
                _counted[r].AddRange(tokens[r]);
                _g.SetCounts(r, [.. _counted[r]], [.. _outputs[r]]);
            }
        }
        _g.AppendCore(tokens, parameter);
    }

    /// <summary>Feeds one row's tokens, for a generator of batch 1; see <see cref="Append(IReadOnlyList{IReadOnlyList{int}})"/>.</summary>
    public void Append(ReadOnlySpan<int> tokens) => Append([tokens.ToArray()]);

    /// <summary>The tokens row <paramref name="row"/> has generated so far (valid until the next step).</summary>
    public ReadOnlySpan<int> Generated(int row)
    {
        if ((uint)row >= (uint)Batch) throw new ArgumentOutOfRangeException(nameof(row), row, $"rows are 0 to {Batch - 1}");
        return CollectionsMarshal.AsSpan(_outputs[row]);
    }

    /// <summary>
    /// What the run has produced so far: each row's tokens and stop reason (<see cref="StopReason.None"/> for a row still
    /// generating), the time to the first token (from <see cref="Generator.Start"/>, the prompt included) and the decode
    /// time after it (wall time, including the caller's own time between steps).
    /// </summary>
    public GenerationResult Result() =>
        new([.. _outputs.Select(o => o.ToArray())], [.. _reasons], _firstToken, _lastToken - _firstToken, _steps);

    /// <summary>Ends the run; the generator keeps the state and pending tokens its last step left.</summary>
    public void Dispose() => End();

    /// <summary>Ends the run (the generator's own calls end it this way too).</summary>
    internal void End()
    {
        if (_ended) return;
        _ended = true;
        _g.Ended(this);
    }

    private void CheckLive()
    {
        if (_ended) throw new InvalidOperationException("this GenerationRun has ended: it was disposed, or its generator went on (Append, Generate, Start, Reset, Restore or Dispose); start a new run.");
    }
}

/// <summary>
/// Runs one function on the thread pool each time it is awaited, with nothing allocated per call: the work item and the
/// awaited source are this object (reused), so a stream of steps costs no Task per token. One call at a time.
/// </summary>
internal sealed class ThreadPoolCall<T>(Func<T> call) : IThreadPoolWorkItem, IValueTaskSource<T>
{
    private ManualResetValueTaskSourceCore<T> _core;

    /// <summary>Queues the call and returns its result when it completes (an exception of the call is thrown there).</summary>
    public ValueTask<T> RunAsync()
    {
        _core.Reset();
        ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        return new ValueTask<T>(this, _core.Version);
    }

    void IThreadPoolWorkItem.Execute()
    {
        T result;
        try
        {
            result = call();
        }
        catch (Exception e)
        {
            _core.SetException(e);
            return;
        }
        _core.SetResult(result);
    }

    T IValueTaskSource<T>.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<T>.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource<T>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
