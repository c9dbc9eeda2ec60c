namespace XLstmOnnx.Runtime.Serving;

/// <summary>
/// A prompt piece read inside a decode step: <see cref="Tokens"/> prompt tokens, with <see cref="Pads"/> masked
/// positions before the piece's token <see cref="PadsAt"/> (0 when there are none).
/// </summary>
internal readonly record struct MixedPieceShape(int Tokens, int Pads, int PadsAt)
{
    /// <summary>The piece's length in the call: tokens and pads.</summary>
    public int Length => Tokens + Pads;
}

/// <summary>
/// How the serving engine cuts prompts into pieces (docs/serving.md, "Reading prompts"), as arithmetic on positions
/// (tokens and masked positions); the engine owns the rows. Every piece ends on a chunk boundary counted from where the
/// reading started, or is the rest of its max_inference_chunksize segment, and never crosses a segment: so the cell's
/// schedule inside a piece is the one it has when the rest of the prompt is read in one call (only a segment's last
/// piece has recurrent tokens), and a prompt read in pieces gives the bits of one call.
/// </summary>
/// <param name="chunk">The model's chunk_size.</param>
/// <param name="segment">The model's max_inference_chunksize.</param>
/// <param name="chunkTokens">ServingOptions.PrefillChunkTokens: the longest piece while others decode (null: paced, and four chunks for mixed steps).</param>
/// <param name="fixedShapes">
/// Whether pieces read inside decode steps take only <see cref="MixedShapes"/> (their calls are captured CUDA graphs);
/// otherwise a piece is the prompt's rest up to four chunks and a tail, unpadded (on the CPU a pad costs a token's work
/// and a new shape costs nothing).
/// </param>
/// <param name="wholeChunks">
/// ServingOptions.PadPrompts: every reading starts with <see cref="LeadPads"/> masked positions, so that it is whole
/// chunks and the cell never runs its recurrent form on a prompt (docs/serving.md, "Whole-chunk prompts").
/// </param>
internal sealed class PromptPieces(long chunk, long segment, int? chunkTokens, bool fixedShapes, bool wholeChunks = false)
{
    private readonly int _chunk = checked((int)chunk);

    /// <summary>Whether readings are padded to whole chunks (<see cref="LeadPads"/>).</summary>
    public bool WholeChunks => wholeChunks;

    /// <summary>The longest piece a mixed step carries in whole chunks: four, or fewer with a smaller <c>chunkTokens</c>.</summary>
    public int MaxMixedChunkTokens { get; } = (int)Math.Max(chunk, Math.Min(4 * chunk, (chunkTokens ?? 4 * chunk) / chunk * chunk));

    /// <summary>Positions a mixed call may carry: the whole chunks, and a padded tail after them unless readings are whole chunks.</summary>
    public int MaxMixedLength => MaxMixedChunkTokens + (wholeChunks ? 0 : _chunk);

    /// <summary>
    /// Masked positions before a reading of <paramref name="tokens"/> tokens: with whole chunks, what fills its first
    /// chunk (then every segment of the reading is whole chunks too, as segments are whole chunks); else 0.
    /// </summary>
    public int LeadPads(int tokens) => wholeChunks ? (_chunk - tokens % _chunk) % _chunk : 0;

    /// <summary>
    /// The most a piece may hold: the reading's <paramref name="left"/> positions, but no further than the end of the
    /// segment the reading is in (<paramref name="read"/> positions read since it started).
    /// </summary>
    public int SegmentRest(int read, int left) => (int)Math.Min(left, segment - read % segment);

    /// <summary>
    /// Positions of a piece read on its own call: unpaced (nothing decodes), the whole <see cref="SegmentRest"/>; paced,
    /// about <paramref name="want"/> positions in whole chunks (at least one), and short remainders (four chunks or less)
    /// whole, since one call costs less than two and the request starts sooner.
    /// </summary>
    public int Piece(int read, int left, long? want)
    {
        int max = SegmentRest(read, left);
        if (want is not { } w) return max;
        w = Math.Max(chunk, w / chunk * chunk);
        return w >= max || max <= 4 * chunk ? max : (int)w;
    }

    /// <summary>
    /// A piece read inside a decode step, of a reading with <paramref name="left"/> positions left, the first
    /// <paramref name="pads"/> of them its lead pads. With whole chunks, 1 to 4 chunks (at most
    /// <see cref="MaxMixedChunkTokens"/>), the lead pads at its start. Else, without fixed shapes, the segment's rest when
    /// it is shorter than <see cref="MaxMixedLength"/>, else <see cref="MaxMixedChunkTokens"/>. With them, one of
    /// <see cref="MixedShapes"/> (each decode batch size and shape is one captured graph): 1, 2 or 4 whole chunks (at most
    /// <see cref="MaxMixedChunkTokens"/>); the recurrent rest of a segment (fewer tokens than a chunk) padded to one of
    /// <see cref="TailLengths"/> with masked positions before it, which leave the state exactly as it was; or 1 or 2
    /// chunks and such a padded tail in one piece when they are the segment's rest and fit in one segment of the call
    /// (the pads then sit between the chunks and the tail, where the cell already runs its recurrent form).
    /// </summary>
    public MixedPieceShape Mixed(int read, int left, int pads = 0)
    {
        int max = SegmentRest(read, left);
        if (wholeChunks)
        {
            if (max % _chunk != 0) throw new InvalidOperationException($"a whole-chunk reading has {max} positions left in its segment, not a multiple of chunk_size {_chunk}");
            return Reading(Math.Min(max, MaxMixedChunkTokens), pads);
        }
        if (pads != 0) throw new ArgumentOutOfRangeException(nameof(pads), pads, "lead pads exist only in whole-chunk readings");
        if (!fixedShapes) return new(max < MaxMixedLength ? max : MaxMixedChunkTokens, 0, 0);
        if (max < _chunk) return new(max, TailLengths().First(n => n >= max) - max, 0);
        int chunks = Math.Min(max, MaxMixedChunkTokens) / _chunk;
        chunks = chunks >= 4 ? 4 : chunks >= 2 ? 2 : 1;
        int tail = max - chunks * _chunk;
        if (tail > 0 && tail < _chunk && chunks <= 2)
        {
            int padded = TailLengths().First(n => n >= tail);
            if (chunks * _chunk + padded <= segment) return new(max, padded - tail, chunks * _chunk);
        }
        return new(chunks * _chunk, 0, 0);
    }

    /// <summary>The lengths a recurrent tail is padded to: 8, 16 and 32 below the chunk length, and chunk − 1.</summary>
    public IEnumerable<int> TailLengths() => ((int[])[8, 16, 32]).Where(n => n < _chunk).Append(_chunk - 1);

    /// <summary>
    /// Every length <see cref="Mixed"/> gives with fixed shapes: 1, 2 and 4 chunks, the padded tails, 1 or 2 chunks with a
    /// padded tail; with whole chunks, 1 to 4 chunks.
    /// </summary>
    public IEnumerable<int> MixedShapes()
    {
        if (wholeChunks) return Enumerable.Range(1, 4).Select(c => c * _chunk).Where(n => n <= MaxMixedChunkTokens);
        var chunks = ((int[])[1, 2, 4]).Select(c => c * _chunk).Where(n => n <= MaxMixedChunkTokens).ToList();
        var combined = chunks.Where(n => n <= 2 * _chunk).SelectMany(n => TailLengths().Select(t => n + t)).Where(n => n <= segment);
        return chunks.Concat(TailLengths()).Concat(combined).Distinct();
    }

    /// <summary>
    /// The next <paramref name="length"/> positions of a reading whose first <paramref name="pads"/> unread positions are
    /// its lead pads: those pads (as many as fit), then tokens.
    /// </summary>
    public static MixedPieceShape Reading(int length, int pads)
    {
        int p = Math.Min(pads, length);
        return new(length - p, p, 0);
    }

    /// <summary>
    /// Reading positions a piece from <see cref="Mixed"/> moves on: with whole chunks its pads are the reading's lead
    /// pads; otherwise they are the call's padding of a tail, not positions of the reading.
    /// </summary>
    public int Positions(MixedPieceShape shape) => wholeChunks ? shape.Length : shape.Tokens;

    /// <summary>
    /// Ids and mask [1, tokens + pads] of <paramref name="prompt"/>'s tokens from <paramref name="from"/> on, with the
    /// shape's masked positions (id <paramref name="pad"/>) before its token <see cref="MixedPieceShape.PadsAt"/>.
    /// </summary>
    public static (long[] Ids, long[] Mask) Ids(ReadOnlySpan<int> prompt, int from, MixedPieceShape shape, long pad)
    {
        var ids = new long[shape.Length];
        var mask = new long[shape.Length];
        Fill(prompt, from, shape, pad, ids, mask);
        return (ids, mask);
    }

    /// <summary>
    /// One row of a call (<paramref name="ids"/> and <paramref name="mask"/>, as long as the call's sequence): the piece
    /// as <see cref="Ids"/> gives it at the row's end, masked positions before it (whole chunks, where callers batch
    /// pieces of whole-chunk readings, or a recurrent no-op before a tail).
    /// </summary>
    public static void Fill(ReadOnlySpan<int> prompt, int from, MixedPieceShape shape, long pad, Span<long> ids, Span<long> mask)
    {
        int offset = ids.Length - shape.Length;
        if (offset < 0 || mask.Length != ids.Length) throw new ArgumentException($"a row of {ids.Length} positions cannot hold a piece of {shape.Length}");
        ids[..offset].Fill(pad);
        mask[..offset].Clear();
        for (int j = 0, t = 0; j < shape.Length; j++)
        {
            bool real = j < shape.PadsAt || j >= shape.PadsAt + shape.Pads;
            ids[offset + j] = real ? prompt[from + t++] : pad;
            mask[offset + j] = real ? 1 : 0;
        }
    }
}
