using XLstmOnnx.Contract;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;

namespace XLstmOnnx.Tests;

/// <summary>
/// The exported graph (chunkwise + recurrent tail, in segments) against <see cref="ReferenceXLstm"/> (recurrent, double),
/// on random checkpoints of this repo's making: independent of the HF fixtures, and covering schedules they do not.
/// </summary>
[TestFixture]
public class ReferenceModelTests
{
    internal static XLstmConfig TinyConfig(bool concatenated = false, bool bias = false, bool tied = false, long chunk = 8, long maxChunk = 16384) => new()
    {
        VocabSize = 97, HiddenSize = 64, EmbeddingDim = 64, NumBlocks = 2, NumHiddenLayers = 2, NumHeads = 2,
        QkDimFactor = 1.0, VDimFactor = 1.0, ChunkSize = chunk, MaxInferenceChunksize = maxChunk,
        FfnProjFactor = 1.5, FfnRoundUpToMultipleOf = 16, WeightMode = concatenated ? "fused" : "single", UseBias = bias,
        TieWordEmbeddings = tied, GateSoftCap = 4.0, OutputLogitSoftCap = 6.0,
    };

    // fp32 graph vs a double-precision oracle through 2 blocks: errors are float rounding, ~1e-6 relative;
    // 2e-4 absolute on logits capped at ±6 leaves room for the chunkwise form's different summation order.
    private const double Atol = 2e-4, Rtol = 1e-3;

    [TestCase(false, false, false, 8L, 16384L, TestName = "single, chunk 8")]
    [TestCase(true, true, false, 8L, 16384L, TestName = "weight_mode fused with bias, chunk 8")]
    [TestCase(false, false, true, 4L, 16384L, TestName = "tied embeddings, chunk 4")]
    [TestCase(false, true, false, 8L, 11L, TestName = "segments of 11 with chunk 8")]
    [TestCase(false, false, false, 1L, 5L, TestName = "chunks of one token, segments of 5 (a one-token segment is a step)")]
    public void ExportMatchesPlainRecurrentReference(bool concatenated, bool bias, bool tied, long chunk, long maxChunk)
    {
        var config = TinyConfig(concatenated, bias, tied, chunk, maxChunk);
        using var tmp = TestPaths.Temp();
        RandomCheckpoint.Write(config, tmp.Sub("ckpt"), SafetensorsDtype.F32, seed: 7);
        OnnxExporter.Export(tmp.Sub("ckpt"), tmp.Sub("onnx"), new ExportOptions());
        using var ckpt = HfCheckpoint.Open(tmp.Sub("ckpt"));
        var reference = new ReferenceXLstm(ckpt.Config, new WeightTable(ckpt.Config).Bind(ckpt.Tensors, "ckpt"));
        using var session = XLstmSession.Load(tmp.Sub("onnx"));

        var rng = new Random(3);
        // pieces: below a chunk, exactly a chunk, several chunks plus a remainder, single steps
        int[] pieces = [3, (int)chunk, 1, (int)(3 * chunk + 5), 1, 1, 29];
        var state = session.CreateState(1);
        var refState = new ReferenceXLstm.State(ckpt.Config);
        foreach (int len in pieces)
        {
            var ids = Enumerable.Range(0, len).Select(_ => (long)rng.Next(97)).ToArray();
            var logits = session.Run(ids, len, state);
            var expected = new List<float>();
            foreach (var id in ids) expected.AddRange(reference.Step(id, refState).Select(d => (float)d));
            var r = ReferenceVerifier.Compare($"piece {len}", "logits", logits.Values, expected.ToArray(), Atol, Rtol);
            Assert.That(r.Violations, Is.Zero, $"piece of {len}: max abs error {r.MaxAbsError:E2}");
        }
        for (int l = 0; l < config.NumBlocks; l++)
        {
            var r = ReferenceVerifier.Compare("state", "C", state[l, StatePart.C], refState.C[l].Select(d => (float)d).ToArray(), Atol, Rtol);
            Assert.That(r.Violations, Is.Zero, $"layer {l} C: max abs error {r.MaxAbsError:E2}");
            Assert.That(state[l, StatePart.M], Is.EqualTo(refState.M[l].Select(d => (float)d).ToArray()).Within(1e-4), $"layer {l} m");
        }
    }
}
