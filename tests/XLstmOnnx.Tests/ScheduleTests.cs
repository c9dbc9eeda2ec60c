using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Architecture;
using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.GraphBuilder.Graph;
using XLstmOnnx.GraphBuilder.Onnx;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.Tests;

/// <summary>
/// <see cref="Schedule"/> is HF's inference schedule: it equals HF's loops written out literally, the shared table
/// tests/golden/hf_schedule.txt (which the C++ kernels' SchedulePiece is tested against in customops/tests), and its
/// ONNX form computes the same numbers as its numeric form when ONNX Runtime runs it.
/// </summary>
[TestFixture]
public class ScheduleTests
{
    private static string GoldenPath => Path.Combine(TestPaths.RepoRoot, "tests", "golden", "hf_schedule.txt");

    /// <summary>
    /// HF, literally: xLSTMModel cuts the input into segments of max_inference_chunksize; per segment of T tokens the
    /// backend runs the step kernel when T = 1, else the chunkwise kernel over ⌊T/L⌋·L tokens and the sequence kernel
    /// (token by token) over the rest.
    /// </summary>
    private static List<SchedulePiece> Hf(long seq, long chunk, long segment)
    {
        var pieces = new List<SchedulePiece>();
        for (long offset = 0; offset < seq; offset += segment)
        {
            long t = Math.Min(segment, seq - offset);
            if (t == 1)
            {
                pieces.Add(new(offset, 1, false));
                continue;
            }
            long chunked = t / chunk * chunk;
            for (long c = 0; c < chunked; c += chunk) pieces.Add(new(offset + c, chunk, true));
            for (long r = chunked; r < t; r++) pieces.Add(new(offset + r, 1, false));
        }
        return pieces;
    }

    /// <summary>Pieces as the golden file writes them: runs "C8x2 R1x5".</summary>
    private static string Runs(IEnumerable<SchedulePiece> pieces)
    {
        var runs = new List<(string Kind, int Count)>();
        foreach (var p in pieces)
        {
            string kind = $"{(p.IsChunk ? 'C' : 'R')}{p.Length}";
            if (runs.Count > 0 && runs[^1].Kind == kind) runs[^1] = (kind, runs[^1].Count + 1);
            else runs.Add((kind, 1));
        }
        return string.Join(" ", runs.Select(r => $"{r.Kind}x{r.Count}"));
    }

    [Test]
    public void EqualsHfsLoops()
    {
        Assert.Multiple(() =>
        {
            for (long chunk = 1; chunk <= 12; chunk++)
            {
                foreach (long segment in new long[] { 1, 2, 5, 8, 13, 16, 40 })
                {
                    var schedule = new Schedule(chunk, segment);
                    for (long seq = 0; seq <= 90; seq++)
                    {
                        var expected = Hf(seq, chunk, segment);
                        Assert.That(schedule.Pieces(seq), Is.EqualTo(expected), $"S={seq} L={chunk} segment={segment}");
                        Assert.That(schedule.Segments(seq).Select(s => s.Length).Sum(), Is.EqualTo(seq), $"segments cover S={seq}");
                    }
                }
            }
        });
    }

    [Test]
    public void SegmentsAreHfsModelLevelCuts()
    {
        var schedule = new Schedule(64, 16384);
        Assert.That(schedule.Segments(40000), Is.EqualTo(new[] { (0L, 16384L), (16384L, 16384L), (32768L, 7232L) }));
        Assert.That(schedule.Segments(16384), Is.EqualTo(new[] { (0L, 16384L) }));
        Assert.That(schedule.Segments(0), Is.Empty);
    }

    [Test]
    public void EqualsTheTableTheCppKernelsAreTestedAgainst()
    {
        var lines = File.ReadAllLines(GoldenPath).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
        Assert.That(lines, Has.Count.GreaterThanOrEqualTo(100), GoldenPath);
        Assert.Multiple(() =>
        {
            foreach (var line in lines)
            {
                var (head, runs) = (line[..line.IndexOf(':')], line[(line.IndexOf(':') + 1)..].Trim());
                long[] v = [.. head.Split(' ').Select(long.Parse)];
                Assert.That(Runs(new Schedule(v[1], v[2]).Pieces(v[0])), Is.EqualTo(runs), $"{GoldenPath}: {line}");
                Assert.That(Runs(Hf(v[0], v[1], v[2])), Is.EqualTo(runs), $"{GoldenPath} agrees with HF's loops: {line}");
            }
        });
    }

    [Test]
    public void SettingsMustBePositiveAndTheErrorNamesTheField()
    {
        var e = Assert.Throws<XLstmOnnxException>(() => _ = new Schedule(0, 16384))!;
        Assert.That(e.Message, Does.Contain("chunk_size").And.Contain("found 0"));
        e = Assert.Throws<XLstmOnnxException>(() => _ = new Schedule(64, -1))!;
        Assert.That(e.Message, Does.Contain("max_inference_chunksize").And.Contain("found -1"));
        e = Assert.Throws<XLstmOnnxException>(() => XLstmConfig.Parse("""{"max_inference_chunksize": 0}""", "c.json"))!;
        Assert.That(e.Message, Does.Contain("c.json").And.Contain("max_inference_chunksize").And.Contain("0"));
    }

    /// <summary>The ONNX form (what the standard-op cell's Loop runs) gives the numeric form's numbers in ONNX Runtime.</summary>
    [TestCase(8, 20)]
    [TestCase(1, 5)]
    [TestCase(16, 16384)]
    [TestCase(20, 8)]
    public void OnnxFormComputesTheSameNumbers(long chunk, long segment)
    {
        var schedule = new Schedule(chunk, segment);
        var g = new OnnxGraph("schedule");
        string seq = g.Input("seq", DataType.Int64, 1L), index = g.Input("index", DataType.Int64, 1L);
        var math = new OnnxPositionMath(g, "/schedule");
        var split = schedule.Split(math, index, seq);
        string[] outputs = ["num_segments", "start", "chunks", "tail_start", "tail_length", "chunk_1_start"];
        string[] values = [schedule.NumSegments(math, seq), split.Start, split.Chunks, split.TailStart, split.TailLength,
            schedule.ChunkStart(math, split.Start, g.Constant(1))];
        for (int i = 0; i < outputs.Length; i++) g.Output(outputs[i], values[i], DataType.Int64, 1L);
        var model = new ModelProto { IrVersion = ExportOptions.IrVersion, Graph = g.Proto };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = ExportOptions.Opset });
        using var session = new InferenceSession(model.ToByteArray());
        Assert.Multiple(() =>
        {
            foreach (long s in new long[] { 1, 2, 7, 8, 9, 20, 21, 41, 100 })
            {
                long segments = schedule.NumSegments(Schedule.Numbers, s);
                for (long k = 0; k < segments; k++)
                {
                    var n = schedule.Split(Schedule.Numbers, k, s);
                    long[] expected = [segments, n.Start, n.Chunks, n.TailStart, n.TailLength, schedule.ChunkStart(Schedule.Numbers, n.Start, 1)];
                    using var sv = OrtValue.CreateTensorValueFromMemory(new[] { s }, [1]);
                    using var kv = OrtValue.CreateTensorValueFromMemory(new[] { k }, [1]);
                    using var r = session.Run(new RunOptions(), ["seq", "index"], [sv, kv], outputs);
                    Assert.That(r.Select(o => o.GetTensorDataAsSpan<long>()[0]), Is.EqualTo(expected), $"S={s} segment {k}");
                }
            }
        });
    }
}
