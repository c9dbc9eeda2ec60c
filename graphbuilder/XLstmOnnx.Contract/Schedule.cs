namespace XLstmOnnx.Contract;

/// <summary>
/// Integer arithmetic on token positions, for <see cref="Schedule"/>: on numbers (<see cref="Schedule.Numbers"/>)
/// or as ONNX nodes on values known only when the graph runs. Each operation's <c>what</c> names the quantity (node paths).
/// All operands are non-negative, so <see cref="Div"/> is floor division.
/// </summary>
public interface IPositionMath<T>
{
    T Const(long value);
    T Add(string what, T a, T b);
    T Sub(string what, T a, T b);
    T Mul(string what, T a, T b);
    T Div(string what, T a, T b);
    T Min(string what, T a, T b);
}

/// <summary>How one segment of the sequence is cut: whole chunks first, then single tokens.</summary>
/// <param name="Start">First token of the segment.</param>
/// <param name="Chunks">Number of whole chunks of L tokens, run in the chunkwise form from <paramref name="Start"/>.</param>
/// <param name="TailStart">First token after the chunks.</param>
/// <param name="TailLength">Tokens run one at a time in the recurrent form (HF's sequence kernel, or its step kernel for one token).</param>
public readonly record struct SegmentSplit<T>(T Start, T Chunks, T TailStart, T TailLength);

/// <summary>One piece of the schedule: a chunk of <see cref="Length"/> tokens, or one recurrent token.</summary>
public readonly record struct SchedulePiece(long Start, long Length, bool IsChunk);

/// <summary>
/// HF's native inference schedule of the mLSTM cell (docs/hf-semantics.md, "The inference schedule"), written once:
/// the sequence is cut into segments of <c>max_inference_chunksize</c> tokens; a segment of T tokens runs its first
/// ⌊T/L⌋·L tokens in the chunkwise form, chunk by chunk (L = <c>chunk_size</c>), and the other T mod L one token at a
/// time in the recurrent form; a segment of one token is the step form. The ONNX Loop emitter builds its index
/// arithmetic from these methods; <see cref="Pieces"/> and <see cref="Segments"/> are the same rules on numbers. The
/// C++ kernels' <c>SchedulePiece</c> (customops/src/kernels/mlstm_params.h) follows the same rules; both are tested
/// against tests/golden/hf_schedule.txt.
/// </summary>
public sealed record Schedule
{
    /// <summary>L: HF's <c>chunk_size</c>.</summary>
    public long ChunkSize { get; }
    /// <summary>HF's <c>max_inference_chunksize</c>: the longest segment.</summary>
    public long SegmentLength { get; }

    /// <summary>Throws naming the config field when either setting is not a positive integer.</summary>
    public Schedule(long chunkSize, long maxInferenceChunksize)
    {
        if (Invalid(chunkSize, maxInferenceChunksize) is { } bad)
        {
            throw new XLstmOnnxException($"{bad.Field} must be a positive integer; found {bad.Value}.");
        }
        ChunkSize = chunkSize;
        SegmentLength = maxInferenceChunksize;
    }

    /// <summary>The first setting that is not a positive integer (by its config field name), or null: the one check.</summary>
    public static (string Field, long Value)? Invalid(long chunkSize, long maxInferenceChunksize) =>
        chunkSize < 1 ? ("chunk_size", chunkSize)
        : maxInferenceChunksize < 1 ? ("max_inference_chunksize", maxInferenceChunksize)
        : null;

    /// <summary>Number of segments of a sequence of <paramref name="seq"/> tokens: ⌈S / segment⌉.</summary>
    public T NumSegments<T>(IPositionMath<T> m, T seq) =>
        m.Div("num_segments", m.Add("num_segments", seq, m.Const(SegmentLength - 1)), m.Const(SegmentLength));

    /// <summary>Segment number <paramref name="index"/> of a sequence of <paramref name="seq"/> tokens, cut into chunks and a tail.</summary>
    public SegmentSplit<T> Split<T>(IPositionMath<T> m, T index, T seq)
    {
        T start = m.Mul("start", index, m.Const(SegmentLength));
        T length = m.Sub("len", m.Min("end", m.Add("end", start, m.Const(SegmentLength)), seq), start);
        T chunks = m.Div("num_chunks", length, m.Const(ChunkSize));
        if (ChunkSize == 1)
        {
            // HF runs a segment of one token with the step kernel; with L = 1 the division alone would make it a
            // chunk. 1 / T is 1 for T = 1 and 0 for longer segments.
            chunks = m.Sub("num_chunks", chunks, m.Div("single_token", m.Const(1), length));
        }
        T chunked = m.Mul("chunked_len", chunks, m.Const(ChunkSize));
        return new(start, chunks, m.Add("tail_start", start, chunked), m.Sub("tail_len", length, chunked));
    }

    /// <summary>First token of chunk <paramref name="chunk"/> of a segment that starts at <paramref name="segmentStart"/>.</summary>
    public T ChunkStart<T>(IPositionMath<T> m, T segmentStart, T chunk) =>
        m.Add("pos", segmentStart, m.Mul("pos", chunk, m.Const(ChunkSize)));

    /// <summary>The segments of a sequence of <paramref name="seq"/> tokens, as (first token, length).</summary>
    public IEnumerable<(long Start, long Length)> Segments(long seq)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(seq);
        long n = NumSegments(Numbers, seq);
        for (long s = 0; s < n; s++)
        {
            var split = Split(Numbers, s, seq);
            yield return (split.Start, split.TailStart + split.TailLength - split.Start);
        }
    }

    /// <summary>Every piece of a sequence of <paramref name="seq"/> tokens, in order: what the cell computes, and in which form.</summary>
    public IEnumerable<SchedulePiece> Pieces(long seq)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(seq);
        long n = NumSegments(Numbers, seq);
        for (long s = 0; s < n; s++)
        {
            var split = Split(Numbers, s, seq);
            for (long c = 0; c < split.Chunks; c++) yield return new(ChunkStart(Numbers, split.Start, c), ChunkSize, true);
            for (long t = 0; t < split.TailLength; t++) yield return new(split.TailStart + t, 1, false);
        }
    }

    /// <summary>The arithmetic on plain numbers.</summary>
    public static IPositionMath<long> Numbers { get; } = new NumberMath();

    private sealed class NumberMath : IPositionMath<long>
    {
        public long Const(long value) => value;
        public long Add(string what, long a, long b) => a + b;
        public long Sub(string what, long a, long b) => a - b;
        public long Mul(string what, long a, long b) => a * b;
        public long Div(string what, long a, long b) => a / b;
        public long Min(string what, long a, long b) => Math.Min(a, b);
    }
}
