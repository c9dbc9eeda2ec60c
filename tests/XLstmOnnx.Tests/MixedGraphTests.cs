using Google.Protobuf;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.GraphBuilder.Onnx;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>
/// The mixed graph (<c>export --mixed-graph</c>, model.mixed.onnx; docs/exported-graph.md, "The mixed graph"): one call
/// of it is a decode step of B rows and a prompt piece of P rows, and gives each row what the plain graph gives it in its
/// own call, bit for bit on the CPU (float32: every row's projections are the same dot products whatever rows are beside
/// it; the cell runs each lane on its own rows).
/// </summary>
[TestFixture]
public class MixedGraphTests
{
    // chunk_size 8, max_inference_chunksize 20: pieces with whole chunks, recurrent tails and a segment boundary
    private static readonly string Fixture = Path.Combine(TestPaths.Fixtures, "segmented");
    private static TempDir _tmp = null!;
    private static string _f32 = "", _bf16 = "";

    [OneTimeSetUp]
    public static void Export()
    {
        _tmp = TestPaths.Temp();
        _f32 = _tmp.Sub("mixed");
        OnnxExporter.Export(Fixture, _f32, new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true, MixedGraph = true });
        _bf16 = _tmp.Sub("mixed-bf16");
        OnnxExporter.Export(Fixture, _bf16, new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true, MixedGraph = true, StateDtype = StateDtype.Bf16 });
    }

    [OneTimeTearDown]
    public static void Cleanup() => _tmp.Dispose();

    /// <summary>
    /// Three decode rows (one masked: it must keep its state) and one prompt row of <paramref name="piece"/> tokens (left
    /// pads masked when <paramref name="pads"/> > 0), through the mixed graph, against a decode step and a prompt call of
    /// the plain graph from the same states: logits, next_token and every state tensor of every row, bit for bit.
    /// </summary>
    [TestCase("float32", 1, 0)]
    [TestCase("float32", 7, 0)]   // a recurrent tail only
    [TestCase("float32", 16, 0)]  // two whole chunks
    [TestCase("float32", 27, 0)]  // a segment (20) and 7 more: chunks, a tail, a second segment
    [TestCase("float32", 12, 5)]  // left pads, masked
    [TestCase("bf16", 27, 0)]
    public void AMixedCallGivesEachRowWhatItsOwnCallGives(string state, int piece, int pads)
    {
        using var session = XLstmSession.Load(state == "bf16" ? _bf16 : _f32);
        var m = session.Manifest;
        var memory = DeviceMemory.For(session.Options);
        using var pool = new StatePool(m, memory, 3, 2, "decode rows");
        using var staging = new StatePool(m, memory, 1, 2, "prompt row");
        using var runner = new StepRunner(session, memory, pool, promptRows: 1, promptTokens: 64);
        var rng = new Random(piece * 31 + pads);
        // states from real prompts: each decode row reads its own, the prompt row a first piece
        for (int r = 0; r < 3; r++) Read(runner, pool, r, RandomIds(rng, 5 + 9 * r), outRow: r);
        Read(runner, staging, 0, RandomIds(rng, 11), outRow: 3);
        var decodeBefore = pool.Read(1, 0, 3);   // the prompts wrote set 1
        var promptBefore = staging.Read(1, 0, 1);
        long[] ids = [.. RandomIds(rng, pads + piece)];
        long[] mask = [.. Enumerable.Range(0, pads + piece).Select(c => c < pads ? 0L : 1L)];
        long[] step = [.. RandomIds(rng, 3)];
        long[] stepMask = [1, 0, 1];

        // the plain graph: a decode step, then the prompt piece in its own call
        step.CopyTo(runner.Ids, 0);
        stepMask.CopyTo(runner.Mask, 0);
        runner.Decode(3, set: 1);
        runner.Prompt(staging, 1, 0, 1, ids, mask, pads + piece, outRow: 3);
        var alone = Outputs(runner, 4);
        var decodeAlone = pool.Read(0, 0, 3);
        var promptAlone = staging.Read(0, 0, 1);

        // the mixed graph from the same states
        pool.Write(1, 0, decodeBefore);
        staging.Write(1, 0, promptBefore);
        pool.Write(0, 0, decodeBefore.Select(t => t.Select(_ => float.NaN).ToArray()).ToArray()); // outputs must be written, not left over
        staging.Write(0, 0, promptBefore.Select(t => t.Select(_ => float.NaN).ToArray()).ToArray());
        runner.DecodeWithPrompt(3, 1, staging, 1, 0, 1, ids, mask, pads + piece);
        var mixed = Outputs(runner, 4);

        Assert.Multiple(() =>
        {
            for (int r = 0; r < 4; r++)
            {
                Assert.That(mixed.Logits[r], Is.EqualTo(alone.Logits[r]), $"row {r}'s logits ({(r < 3 ? "decode" : "prompt")})");
                Assert.That(mixed.Next[r], Is.EqualTo(alone.Next[r]), $"row {r}'s next_token");
            }
            Assert.That(pool.Read(0, 0, 3), Is.EqualTo(decodeAlone), "the decode rows' state (the masked row kept its own)");
            Assert.That(staging.Read(0, 0, 1), Is.EqualTo(promptAlone), "the prompt row's state");
        });
        // the masked decode row really kept its state (else the check above would compare two wrong states)
        var masked = pool.Read(0, 1, 1);
        var before = pool.Read(1, 1, 1);
        Assert.That(masked, Is.EqualTo(before), "a masked decode row leaves its state as it was");
    }

    /// <summary>
    /// model.mixed.onnx reads model.onnx's weights (the same initializer entries: one weights file, nothing written twice)
    /// and takes the decode lane's inputs under the plain names and the prompt lane's with the prompt_ prefix.
    /// </summary>
    [Test]
    public void TheMixedGraphReadsThePlainGraphsWeightsUnderTheirNames()
    {
        using var tmp = TestPaths.Temp();
        string dir = tmp.Sub("external");
        OnnxExporter.Export(Fixture, dir, new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, MixedGraph = true, ExternalData = ExternalDataMode.Always });
        var plain = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(dir, OnnxExporter.ModelFile)));
        var mixed = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(dir, OnnxExporter.MixedModelFile)));
        var plainWeights = plain.Graph.Initializer.Where(t => t.DataLocation == TensorProto.Types.DataLocation.External).ToDictionary(t => t.Name);
        var mixedWeights = mixed.Graph.Initializer.Where(t => t.DataLocation == TensorProto.Types.DataLocation.External).ToList();
        Assert.That(mixedWeights.Select(t => t.Name), Is.EquivalentTo(plainWeights.Keys), "every weight, once");
        foreach (var t in mixedWeights) Assert.That(t.ExternalData, Is.EqualTo(plainWeights[t.Name].ExternalData), $"{t.Name}: the same bytes of {OnnxExporter.DataFile}");
        var m = ModelManifest.Load(dir);
        Assert.That(m.MixedModelFile, Is.EqualTo(OnnxExporter.MixedModelFile));
        string[] lane = [GraphNames.InputIds, GraphNames.AttentionMask, .. m.State.PastNames()];
        Assert.That(mixed.Graph.Input.Select(i => i.Name), Is.EquivalentTo(lane.Concat(lane.Select(GraphNames.Prompt))));
        Assert.That(mixed.Graph.Output.Select(o => o.Name),
            Is.EquivalentTo(m.State.PresentNames().Concat(m.State.PresentNames().Select(GraphNames.Prompt)).Append(GraphNames.Logits)));
        // the lanes meet the cell in three nodes a layer that read and write the stream's rows: no node splits the stream
        // by lane, lays a lane out as heads or joins the lanes again (docs/exported-graph.md, "The mixed graph")
        foreach (var (op, path) in new[] { (CustomOps.GatesLanes, "lanes/if_gate"), (CustomOps.Lanes, "lanes/cell"), (CustomOps.HeadNormGateLanes, "lanes/multihead_norm") })
        {
            var nodes = mixed.Graph.Node.Where(n => n.OpType == op).ToList();
            Assert.That(nodes.Select(n => n.Name), Is.EqualTo(Enumerable.Range(0, m.NumLayers).Select(i => $"/model/blocks.{i}/mlstm/{path}/{op}")), op);
            Assert.That(nodes, Has.All.Property("Domain").EqualTo(CustomOps.Domain));
        }
        var layer = mixed.Graph.Node.Where(n => n.Name.StartsWith("/model/blocks.0/mlstm/", StringComparison.Ordinal)).ToList();
        Assert.That(layer.Where(n => n.OpType is "Split" or "Transpose" or "Concat").Select(n => n.Name),
            Is.EqualTo(new[] { "/model/blocks.0/mlstm/qkvo_proj/Split" }), "one Split of the projections by kind, none by lane");
        Assert.That(mixed.Graph.Node.Count(n => n.OpType is CustomOps.Chunkwise or CustomOps.Gates or CustomOps.HeadNormGate), Is.Zero,
            "no per-lane cell, gates or norm beside the lanes nodes");
        var cell = mixed.Graph.Node.First(n => n.OpType == CustomOps.Lanes);
        Assert.That(cell.Input.Skip(5).Take(3), Is.EqualTo(m.State.PastNames().Take(3)), "the decode lane's state after q, k, v and its gates");
        Assert.That(cell.Input.Skip(10).Take(3), Is.EqualTo(m.State.PastNames().Take(3).Select(GraphNames.Prompt)), "then the prompt lane's");
    }

    [Test]
    public void AMixedGraphNeedsTheCustomCellAndTheMask()
    {
        var e = Assert.Throws<XLstmOnnxException>(() => new ExportOptions { MixedGraph = true }.Validate())!;
        Assert.That(e.Message, Does.Contain("ExportOptions.MixedGraph").And.Contain("ExportOptions.MLstmKernels custom").And.Contain("found onnx"));
        e = Assert.Throws<XLstmOnnxException>(() => new ExportOptions { MixedGraph = true, MLstmKernels = MLstmKernels.Custom, AttentionMask = false }.Validate())!;
        Assert.That(e.Message, Does.Contain("ExportOptions.AttentionMask").And.Contain("found false"));
    }

    private static IEnumerable<long> RandomIds(Random rng, int n) => Enumerable.Range(0, n).Select(_ => (long)(3 + rng.Next(95)));

    /// <summary>Reads <paramref name="prompt"/> into row <paramref name="row"/> of <paramref name="pool"/> from a zero state (set 0 in, set 1 out).</summary>
    private static void Read(StepRunner runner, StatePool pool, int row, IEnumerable<long> prompt, int outRow)
    {
        long[] ids = [.. prompt];
        pool.Zero(0, row, 1);
        runner.Prompt(pool, 0, row, 1, ids, [.. ids.Select(_ => 1L)], ids.Length, outRow);
    }

    private static (float[][] Logits, long[] Next) Outputs(StepRunner runner, int rows)
    {
        var logits = new float[rows][];
        var next = new long[rows];
        for (int r = 0; r < rows; r++)
        {
            logits[r] = new float[runner.Vocab];
            runner.DownloadLogits(r, logits[r]);
        }
        runner.DownloadNext(0, next);
        return (logits, next);
    }
}
