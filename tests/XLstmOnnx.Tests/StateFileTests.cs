using XLstmOnnx.Contract;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>
/// A state file by value, not by shape: each tensor of a saved state is the model's own state of that layer and part
/// (so two layers swapped, or C read as another same-shaped tensor, fail on values), a prompt fed in segments of
/// max_inference_chunksize ends in the one-call state (a segment missing or read twice fails), a load gives back
/// exactly what was saved, and a file of another format version is refused.
/// </summary>
[TestFixture]
public class StateFileTests
{
    private TempDir _tmp = null!;
    private string _model = "";

    [OneTimeSetUp]
    public void Export()
    {
        _tmp = TestPaths.Temp();
        _model = _tmp.Sub("segmented");
        // two layers of the same shapes, segments of 20 tokens, chunks of 8
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "segmented"), _model, new ExportOptions());
    }

    [OneTimeTearDown]
    public void Cleanup() => _tmp.Dispose();

    private static readonly int[] Prompt = [.. Enumerable.Range(0, 47).Select(i => 3 + i * 7 % 90)]; // three segments: 20 + 20 + 7

    [Test]
    public void ASavedStateHoldsEachLayersStateByName()
    {
        using var session = XLstmSession.Load(_model);
        Assert.That(session.Manifest.MaxInferenceChunksize, Is.EqualTo(20), "the prompt spans three segments");
        Assert.That(session.Manifest.NumLayers, Is.EqualTo(2));
        var state = session.CreateState(1);
        session.Run([.. Prompt.Select(i => (long)i)], Prompt.Length, state); // one call: the graph walks the segments itself

        using var g = new Generator(session);
        g.Append([Prompt]);
        string path = _tmp.Sub("state.safetensors");
        g.Snapshot().Save(path);
        using var file = SafetensorsFile.Open(path);
        Assert.Multiple(() =>
        {
            for (int l = 0; l < session.Manifest.NumLayers; l++)
            {
                foreach (var part in StateLayout.Parts)
                {
                    string name = $"state.{l}.{StateLayout.Name(part)}";
                    // 2e-5: the generator feeds one segment per call, the one call loops over them in the graph: the
                    // same math in the same order, float32 rounding of state values of order 1 at most
                    Assert.That(file.Get(name).ToFloat32(), Is.EqualTo(state[l, part]).Within(2e-5), name);
                }
            }
            Assert.That(file.Get("pending").ToInt64(), Is.EqualTo(new[] { -1L }), "nothing sampled, nothing pending");
        });
        // the layers differ, so a swap of same-shaped tensors is visible
        Assert.That(state[0, StatePart.C], Is.Not.EqualTo(state[1, StatePart.C]).Within(1e-3));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void ALoadedStateIsWhatWasSaved(bool bf16State)
    {
        // a bf16 state is saved as its float32 values (exact) and loaded back into bfloat16 (exact again)
        string model = _model;
        if (bf16State)
        {
            model = _tmp.Sub("model-bf16-state");
            if (!Directory.Exists(model))
            {
                OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "segmented"), model, new ExportOptions { MLstmKernels = MLstmKernels.Custom, StateDtype = StateDtype.Bf16 });
            }
        }
        using var session = XLstmSession.Load(model);
        using var g = new Generator(session);
        var o = new GenerationOptions { Greedy = true, MaxNewTokens = 5, IgnoreEos = true };
        var first = g.Generate([Prompt], o).Tokens[0];
        var before = g.Snapshot();
        string path = _tmp.Sub("roundtrip.safetensors");
        before.Save(path);
        var loaded = StateSnapshot.Load(path, session.Manifest);
        Assert.Multiple(() =>
        {
            for (int l = 0; l < session.Manifest.NumLayers; l++)
            {
                foreach (var part in StateLayout.Parts)
                {
                    int i = session.Manifest.State.Index(l, part);
                    Assert.That(loaded.Tensors[i], Is.EqualTo(before.Tensors[i]), $"layer {l} {part}: bit for bit");
                }
            }
            Assert.That(loaded.Pending[0], Is.EqualTo(new[] { first[^1] }), "the last token, not yet fed");
        });
        var next = g.Generate([[]], o).Tokens[0];
        using var h = new Generator(session);
        h.Restore(loaded);
        Assert.That(h.Generate([[]], o).Tokens[0], Is.EqualTo(next), "a loaded state continues like the live one");
    }

    [Test]
    public void AnotherFormatVersionIsRefused()
    {
        using var session = XLstmSession.Load(_model);
        using var g = new Generator(session);
        g.Append([Prompt]);
        string path = _tmp.Sub("v1.safetensors"), other = _tmp.Sub("v2.safetensors");
        g.Snapshot().Save(path);
        using (var f = SafetensorsFile.Open(path))
        {
            var entries = f.Tensors.Select(t => t.Dtype == SafetensorsDtype.I64
                ? SafetensorsWriter.I64(t.Name, t.Shape, t.ToInt64())
                : SafetensorsWriter.F32(t.Name, t.Shape, t.ToFloat32())).ToList();
            var meta = f.Metadata.ToDictionary(kv => kv.Key, kv => kv.Value);
            meta["format_version"] = (StateSnapshot.FormatVersion + 1).ToString(System.Globalization.CultureInfo.InvariantCulture);
            SafetensorsWriter.Write(other, entries, meta);
        }
        Assert.That(StateSnapshot.Load(path, session.Manifest).Batch, Is.EqualTo(1), "the file as saved loads");
        var e = Assert.Throws<XLstmOnnxException>(() => StateSnapshot.Load(other, session.Manifest))!;
        Assert.That(e.Message, Does.Contain(other).And.Contain($"'format_version' is {StateSnapshot.FormatVersion + 1}").And.Contain($"reads {StateSnapshot.FormatVersion}"));
    }
}
