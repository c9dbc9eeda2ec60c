using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;

namespace XLstmOnnx.Tests;

/// <summary>The inputs_embeds and hidden-states variants agree with the plain export (hidden states against transformers: FixtureTests).</summary>
[TestFixture]
public class ExportOptionTests
{
    private static readonly string Fixture = Path.Combine(TestPaths.Fixtures, "fused_bias");

    [Test]
    public void NextTokenNeedsLastLogitsOnly()
    {
        using var tmp = TestPaths.Temp();
        var e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(Fixture, tmp.Sub("m"), new ExportOptions { NextToken = true }));
        Assert.Multiple(() =>
        {
            Assert.That(e!.Message, Does.StartWith("ExportOptions.NextToken needs ExportOptions.LastLogitsOnly"));
            Assert.That(e.Parameter, Is.EqualTo("ExportOptions.NextToken"));
            Assert.That(Directory.Exists(tmp.Sub("m")), Is.False, "nothing written");
        });
    }

    [Test]
    public void InputsEmbedsEqualsInputIds()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Fixture, tmp.Sub("ids"), new ExportOptions());
        OnnxExporter.Export(Fixture, tmp.Sub("embeds"), new ExportOptions { InputsEmbeds = true });
        using var ids = XLstmSession.Load(tmp.Sub("ids"));
        using var embeds = XLstmSession.Load(tmp.Sub("embeds"));
        Assert.That(embeds.Manifest.Input, Is.EqualTo("inputs_embeds"));

        long[] tokens = [5, 17, 99, 3, 3, 42, 7, 8, 120, 1, 0];
        using var ckpt = HfCheckpoint.Open(Fixture);
        var table = ckpt.Tensors["backbone.embeddings.weight"];
        int e = (int)ckpt.Config.EmbeddingDim;
        var x = new float[tokens.Length * e];
        foreach (var (t, i) in tokens.Select((t, i) => (t, i))) table.ReadFloat32(t * e, x.AsSpan(i * e, e));

        var a = ids.Run(tokens, tokens.Length, ids.CreateState(1));
        var b = embeds.RunEmbeds(x, tokens.Length, embeds.CreateState(1));
        // the same graph after the Gather: bit-identical is expected; 1e-6 allows for a different kernel choice
        Assert.That(b.Values, Is.EqualTo(a.Values).Within(1e-6));
    }

    [Test]
    public void HiddenStatesStartWithTheEmbeddingsAndEndWithTheNormedOutput()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Fixture, tmp.Sub("h"), new ExportOptions { HiddenStates = true });
        using var s = XLstmSession.Load(tmp.Sub("h"));
        using var ckpt = HfCheckpoint.Open(Fixture);
        var c = ckpt.Config;
        var hidden = new Dictionary<string, float[]>();
        long[] tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        var logits = s.Run(tokens, tokens.Length, s.CreateState(1), hidden);
        Assert.That(hidden.Keys, Is.EquivalentTo(Enumerable.Range(0, (int)c.NumBlocks + 1).Select(i => $"hidden_states.{i}")));

        // logits = cap(h_last · lm_headᵀ): recompute from the last hidden state in C#
        var h = hidden[$"hidden_states.{c.NumBlocks}"];
        var lm = ckpt.Tensors["lm_head.weight"].ToFloat32();
        int H = (int)c.HiddenSize, V = (int)c.VocabSize;
        double cap = c.OutputLogitSoftCap!.Value, worst = 0;
        for (int t = 0; t < tokens.Length; t++)
        {
            for (int v = 0; v < V; v++)
            {
                double acc = 0;
                for (int j = 0; j < H; j++) acc += h[t * H + j] * lm[v * H + j];
                worst = Math.Max(worst, Math.Abs(cap * Math.Tanh(acc / cap) - logits.Values[t * V + v]));
            }
        }
        Assert.That(worst, Is.LessThan(1e-4), "fp32 matmul of width 64 against a double one");
        Assert.That(hidden["hidden_states.0"], Is.Not.EqualTo(hidden["hidden_states.1"]));
        // transformers' first entry is the embedding output: the checkpoint's rows, exactly (a Gather)
        var table = ckpt.Tensors["backbone.embeddings.weight"];
        var rows = new float[tokens.Length * H];
        for (int t = 0; t < tokens.Length; t++) table.ReadFloat32(tokens[t] * H, rows.AsSpan(t * H, H));
        Assert.That(hidden["hidden_states.0"], Is.EqualTo(rows));
    }
}
