using XLstmOnnx.Contract;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// How the serving engine cuts prompts (PromptPieces): for every prompt length and reading start, the pieces cover the
/// prompt exactly, keep the schedule of one call (chunks from where reading started, recurrent tokens only at a
/// segment's end, no piece across a segment), and a piece read inside a decode step has one of the few captured
/// shapes, its pads masked and placed only where the cell already runs its recurrent form.
/// </summary>
[TestFixture]
public class PromptPiecesTests
{
    /// <summary>xLSTM-7b's schedule, the fixture "segmented" (chunk 8, segments of 20), and pieces capped at one chunk.</summary>
    [TestCase(64, 16384, null, true)]
    [TestCase(8, 20, null, true)]
    [TestCase(8, 20, 8, true)]
    [TestCase(64, 16384, 64, true)]
    [TestCase(64, 16384, null, false)]
    [TestCase(8, 20, null, false)]
    [TestCase(16, 16384, null, false)]
    public void MixedPiecesCoverThePromptInTheScheduleOfOneCall(int chunk, int segment, int? chunkTokens, bool fixedShapes)
    {
        var pieces = new PromptPieces(chunk, segment, chunkTokens, fixedShapes);
        var shapes = pieces.MixedShapes().ToHashSet();
        var schedule = new Schedule(chunk, segment);
        foreach (int length in Enumerable.Range(1, 3 * chunk + 5).Concat([segment - 1, segment, segment + chunk + 3]))
        {
            int read = 0;
            var prompt = Enumerable.Range(0, length).Select(i => 1000 + i).ToArray();
            while (read < length)
            {
                var shape = pieces.Mixed(read, length - read);
                string at = $"length {length}, read {read}: {shape}";
                if (fixedShapes) Assert.That(shapes, Does.Contain(shape.Length), at);
                else Assert.That(shape.Pads, Is.Zero, at + ": no pads without fixed shapes");
                Assert.That(shape.Length, Is.LessThanOrEqualTo(pieces.MaxMixedLength), at);
                Assert.That(shape.Tokens, Is.InRange(1, length - read), at);
                Assert.That(pieces.Positions(shape), Is.EqualTo(shape.Tokens), at + ": a tail's pads are the call's, not the reading's");
                // the piece never crosses the segment it starts in
                Assert.That(read % segment + shape.Tokens, Is.LessThanOrEqualTo(segment), at);
                // its real tokens' schedule: whole chunks then, only at the segment's (or prompt's) end, recurrent tokens
                int inSegment = read % segment, segmentEnd = Math.Min(segment, inSegment + (length - read));
                int asChunks = shape.Tokens / chunk * chunk; // real tokens read as chunks; the rest are recurrent
                Assert.That(inSegment % chunk, Is.Zero, at + ": starts on a chunk boundary of its segment");
                if (asChunks < shape.Tokens)
                {
                    Assert.That(inSegment + shape.Tokens, Is.EqualTo(segmentEnd), at + ": recurrent tokens only at the end of a segment");
                }
                // the call's own schedule of Length positions: the same chunks, then the pads and the rest recurrent
                var callPieces = schedule.Pieces(shape.Length).ToList();
                Assert.That(callPieces.Where(q => q.IsChunk).Sum(q => q.Length), Is.EqualTo(asChunks), at + ": the call runs the same chunks");
                Assert.That(callPieces.Where(q => q.IsChunk).All(q => q.Start < asChunks), at + ": pads never in a chunk");
                if (shape.Pads > 0) Assert.That(shape.PadsAt, Is.EqualTo(asChunks), at);
                // ids: the prompt's tokens in order, pads masked between
                var (ids, mask) = PromptPieces.Ids(prompt, read, shape, pad: 7);
                Assert.That(ids.Where((_, j) => mask[j] == 1), Is.EqualTo(prompt.Skip(read).Take(shape.Tokens).Select(t => (long)t)), at);
                Assert.That(mask.Take(shape.PadsAt).Concat(mask.Skip(shape.PadsAt + shape.Pads)), Is.All.EqualTo(1), at);
                Assert.That(mask[^1], Is.EqualTo(1), at + ": the last position is a real token (its logits are the prompt's)");
                read += shape.Tokens;
            }
        }
    }

    [Test]
    public void A64TokenChunkModelHasFifteenShapes()
    {
        var pieces = new PromptPieces(64, 16384, null, fixedShapes: true);
        Assert.That(pieces.TailLengths(), Is.EqualTo(new[] { 8, 16, 32, 63 }));
        Assert.That(pieces.MixedShapes().Order(), Is.EqualTo(new[] { 8, 16, 32, 63, 64, 72, 80, 96, 127, 128, 136, 144, 160, 191, 256 }));
        // a 100-token prompt: one step (a chunk, 28 pads, 36 tokens); 300 tokens: 4 chunks, then 44 more padded to 63
        Assert.That(pieces.Mixed(0, 100), Is.EqualTo(new MixedPieceShape(100, 27, 64)));
        Assert.That(pieces.Mixed(0, 300), Is.EqualTo(new MixedPieceShape(256, 0, 0)));
        Assert.That(pieces.Mixed(256, 44), Is.EqualTo(new MixedPieceShape(44, 19, 0)));
    }

    [Test]
    public void PacedPiecesAreWholeChunksAndShortRestsGoWhole()
    {
        var pieces = new PromptPieces(64, 16384, null, fixedShapes: false);
        Assert.That(pieces.Piece(0, 1000, null), Is.EqualTo(1000), "unpaced: the whole segment's rest");
        Assert.That(pieces.Piece(0, 1000, 200), Is.EqualTo(192), "whole chunks");
        Assert.That(pieces.Piece(0, 1000, 10), Is.EqualTo(64), "at least one chunk");
        Assert.That(pieces.Piece(0, 250, 64), Is.EqualTo(250), "four chunks or less go whole");
        Assert.That(pieces.Piece(16000, 1000, 64), Is.EqualTo(64), "a chunk of a long rest");
        Assert.That(pieces.Piece(16300, 1000, 64), Is.EqualTo(84), "the segment's short rest, whole");
        Assert.That(pieces.Piece(16320, 1000, 4096), Is.EqualTo(64), "to the segment's end");
    }

    /// <summary>
    /// Whole-chunk readings (ServingOptions.PadPrompts): the lead pads fill the first chunk, every piece (between steps or
    /// inside them) is whole chunks of one of the captured shapes, the pads are the first piece's first positions, and
    /// the pieces give the prompt's tokens in order, ending on a real token.
    /// </summary>
    [TestCase(64, 16384, null, true)]
    [TestCase(8, 16384, null, false)]
    [TestCase(8, 16, 8, true)]
    [TestCase(16, 64, 32, true)]
    public void WholeChunkReadingsArePaddedOnceAndCutInWholeChunks(int chunk, int segment, int? chunkTokens, bool fixedShapes)
    {
        var pieces = new PromptPieces(chunk, segment, chunkTokens, fixedShapes, wholeChunks: true);
        var shapes = pieces.MixedShapes().ToHashSet();
        Assert.That(shapes, Is.All.Matches<int>(n => n % chunk == 0 && n <= pieces.MaxMixedChunkTokens));
        foreach (int length in Enumerable.Range(1, 5 * chunk + 3).Append(segment + chunk + 3))
        {
            var prompt = Enumerable.Range(0, length).Select(i => 1000 + i).ToArray();
            int lead = pieces.LeadPads(length);
            Assert.That(lead, Is.InRange(0, chunk - 1));
            Assert.That((lead + length) % chunk, Is.Zero, $"length {length}: {lead} pads make whole chunks");
            foreach (bool mixed in new[] { true, false })
            {
                int read = 0, pads = lead, fed = 0;
                var tokens = new List<long>();
                while (pads + length - fed > 0)
                {
                    int left = pads + length - fed;
                    var shape = mixed ? pieces.Mixed(read, left, pads) : PromptPieces.Reading(pieces.Piece(read, left, chunk), pads);
                    Assert.That(pieces.Positions(shape), Is.EqualTo(shape.Length), "whole chunks: a piece's pads are positions of the reading");
                    string at = $"length {length}, {(mixed ? "mixed" : "between steps")}, read {read}: {shape}";
                    Assert.That(shape.Length % chunk, Is.Zero, at + ": whole chunks");
                    Assert.That(read % segment + shape.Length, Is.LessThanOrEqualTo(segment), at + ": inside its segment");
                    if (mixed && fixedShapes) Assert.That(shapes, Does.Contain(shape.Length), at);
                    Assert.That(shape.Pads, Is.EqualTo(read == 0 ? lead : 0), at + ": the lead pads, all in the first piece");
                    Assert.That(shape.PadsAt, Is.Zero, at);
                    // as a row of a call one chunk longer (another prompt's longer piece beside it): a masked chunk first
                    var ids = new long[shape.Length + chunk];
                    var mask = new long[shape.Length + chunk];
                    PromptPieces.Fill(prompt, fed, shape, 7, ids, mask);
                    Assert.That(mask.Take(chunk + shape.Pads), Is.All.Zero, at);
                    Assert.That(ids.Skip(chunk), Is.EqualTo(PromptPieces.Ids(prompt, fed, shape, 7).Ids), at + ": the piece at the row's end");
                    Assert.That(mask[^1], Is.EqualTo(1), at + ": the last position is a real token");
                    tokens.AddRange(ids.Where((_, j) => mask[j] == 1));
                    read += shape.Length;
                    fed += shape.Tokens;
                    pads -= shape.Pads;
                }
                Assert.That(tokens, Is.EqualTo(prompt.Select(t => (long)t)), $"length {length}: every token once, in order");
            }
        }
    }

    [Test]
    public void A64TokenChunkModelPadsA100TokenPromptTo128()
    {
        var pieces = new PromptPieces(64, 16384, null, fixedShapes: true, wholeChunks: true);
        Assert.That(pieces.MixedShapes(), Is.EqualTo(new[] { 64, 128, 192, 256 }));
        Assert.That(pieces.MaxMixedLength, Is.EqualTo(256));
        Assert.That(pieces.LeadPads(100), Is.EqualTo(28));
        Assert.That(pieces.LeadPads(128), Is.Zero);
        Assert.That(pieces.Mixed(0, 128, 28), Is.EqualTo(new MixedPieceShape(100, 28, 0)), "one step: 28 pads and 100 tokens");
        Assert.That(pieces.Mixed(0, 320, 20), Is.EqualTo(new MixedPieceShape(236, 20, 0)), "300 tokens: 4 chunks, then one");
        Assert.That(pieces.Mixed(256, 64, 0), Is.EqualTo(new MixedPieceShape(64, 0, 0)));
        Assert.That(new PromptPieces(64, 16384, null, fixedShapes: true).LeadPads(100), Is.Zero, "not padded unless asked");
    }
}
