using XLstmOnnx.GraphBuilder.Config;

namespace XLstmOnnx.Tests;

[TestFixture]
public class ConfigTests
{
    [Test]
    public void DefaultsAreThe7B()
    {
        var c = XLstmConfig.Parse("{}", "empty.json");
        Assert.Multiple(() =>
        {
            Assert.That(c.HiddenSize, Is.EqualTo(4096));
            Assert.That(c.QkDim, Is.EqualTo(2048));
            Assert.That(c.QkHeadDim, Is.EqualTo(256));
            Assert.That(c.VHeadDim, Is.EqualTo(512));
            Assert.That(c.FfnDim, Is.EqualTo(10944), "4096 * 2.667 = 10924.032 rounds up to 10944");
            Assert.That(c.NumBlocks, Is.EqualTo(32));
            Assert.That(c.GateSoftCap, Is.EqualTo(15.0));
            Assert.That(c.OutputLogitSoftCap, Is.EqualTo(30.0));
        });
    }

    [Test]
    public void PresetParsesWithTritonKernelNames()
    {
        var c = XLstmConfig.Load(Path.Combine(TestPaths.RepoRoot, "models", "presets", "xlstm-7b.json"));
        Assert.That(c.ChunkwiseKernel, Is.EqualTo("chunkwise--triton_xl_chunk"));
        Assert.That(KernelNames.Resolve(c, "preset"), Is.EqualTo((MLstmForm.Chunkwise, MLstmForm.Sequence, MLstmForm.Step)));
    }

    [TestCase(128.5, 64, 128, TestName = "non-integer within 1 above a multiple rounds DOWN (HF quirk)")]
    [TestCase(128.0, 64, 128, TestName = "a multiple stays")]
    [TestCase(129.0, 64, 192, TestName = "an integer above a multiple rounds up")]
    [TestCase(96.32, 32, 96, TestName = "tied_dims fixture: 64 * 1.505")]
    [TestCase(10924.032, 64, 10944, TestName = "7B FFN")]
    public void RoundUpIsPythons(double x, double m, long expected) =>
        Assert.That(PythonMath.RoundUpToNextMultipleOf(x, m), Is.EqualTo(expected));

    [Test]
    public void MissingHiddenSizeKeepsHfDefaultAndIsRefused()
    {
        // HF: hidden_size defaults to 4096 (not None), so embedding_dim alone does not set the model width.
        var e = Assert.Throws<XLstmOnnxException>(() => XLstmConfig.Parse("""{"embedding_dim": 2048}""", "c.json"));
        Assert.That(e!.Message, Does.Contain("embedding_dim").And.Contain("4096").And.Contain("2048"));
    }

    [Test]
    public void NullHiddenSizeTakesEmbeddingDim()
    {
        var c = XLstmConfig.Parse("""{"hidden_size": null, "embedding_dim": 2048}""", "c.json");
        Assert.That(c.HiddenSize, Is.EqualTo(2048));
    }

    [Test]
    public void NumBlocksDefaultsToNumHiddenLayers() =>
        Assert.That(XLstmConfig.Parse("""{"num_hidden_layers": 3}""", "c.json").NumBlocks, Is.EqualTo(3));

    [TestCase("""{"num_heads": 3}""", "num_heads", "3", TestName = "heads must divide the q/k width")]
    [TestCase("""{"vocab_size": -5}""", "vocab_size", "-5", TestName = "negative vocab")]
    [TestCase("""{"weight_mode": "packed"}""", "weight_mode", "packed", TestName = "unknown weight_mode")]
    [TestCase("""{"chunkwise_kernel": "chunkwise--cuda"}""", "chunkwise_kernel", "chunkwise--triton_xl_chunk", TestName = "unknown kernel lists the known")]
    [TestCase("""{"chunkwise_kernel": "chunkwise--triton_xl_chunk_siging"}""", "chunkwise_kernel", "sigmoid", TestName = "siging kernel is different math")]
    [TestCase("""{"hidden_size": 96, "embedding_dim": 96, "num_heads": 2}""", "qk_dim_factor", "48", TestName = "cache rounding mismatch")]
    [TestCase("""{"chunk_size": 0}""", "chunk_size", "0", TestName = "chunk_size zero")]
    [TestCase("""{"norm_eps": "tiny"}""", "norm_eps", "\"tiny\"", TestName = "wrong JSON type")]
    [TestCase("""{"gate_soft_cap": -1}""", "gate_soft_cap", "-1", TestName = "negative cap")]
    [TestCase("""{"mode": "eval"}""", "mode", "eval", TestName = "unknown mode")]
    [TestCase("""{"eos_token_id": 60000}""", "eos_token_id", "60000", TestName = "token id outside the vocabulary")]
    [TestCase("""{"model_type": "mamba"}""", "model_type", "mamba", TestName = "not an xLSTM")]
    [TestCase("""{"num_blocks": 40}""", "num_hidden_layers", "32", TestName = "more blocks than cache entries")]
    public void InvalidValuesNameFieldAndValue(string json, string field, string value)
    {
        var e = Assert.Throws<XLstmOnnxException>(() => XLstmConfig.Parse(json, "bad.json"));
        Assert.That(e!.Message, Does.StartWith("bad.json:").And.Contain($"'{field}'").And.Contain(value));
    }

    [Test]
    public void InvalidJsonNamesTheFile()
    {
        var e = Assert.Throws<XLstmOnnxException>(() => XLstmConfig.Parse("{", "broken.json"));
        Assert.That(e!.Message, Does.Contain("broken.json").And.Contain("invalid JSON"));
    }

    [Test]
    public void RoundTripKeepsEveryFieldAndUnknownOnes()
    {
        string json = File.ReadAllText(Path.Combine(TestPaths.Fixtures, "fused_bias", "config.json"));
        var c = XLstmConfig.Parse(json, "fused_bias");
        var again = XLstmConfig.Parse(c.ToJson(), "round trip");
        Assert.That(again with { Extra = c.Extra }, Is.EqualTo(c));
        Assert.That(again.Extra.Keys, Is.EquivalentTo(c.Extra.Keys), "fields we do not interpret survive");
        Assert.That(c.ConcatenatedWeights && c.UseBias, "fixture has weight_mode fused (concatenated weights) and biases");
    }

    /// <summary>The float fields of transformers' xLSTMConfig: its strict config refuses a JSON integer for any of them.</summary>
    private static readonly string[] FloatFields = ["norm_eps", "qk_dim_factor", "v_dim_factor", "eps", "ffn_proj_factor", "gate_soft_cap", "output_logit_soft_cap"];

    [Test]
    public void MakeCheckpointWritesAConfigTransformersLoads()
    {
        using var tmp = TestPaths.Temp();
        // the tiny preset with the 7B preset's Triton kernel names and float fields written as integers
        var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "models", "presets", "xlstm-tiny.json")))!.AsObject();
        config["chunkwise_kernel"] = "chunkwise--triton_xl_chunk";
        config["sequence_kernel"] = "native_sequence__triton";
        config["step_kernel"] = "triton";
        config["v_dim_factor"] = 1;
        config["gate_soft_cap"] = 15;
        File.WriteAllText(tmp.Sub("config.json"), config.ToJsonString());
        var r = CliTests.Run("make-checkpoint", "--config", tmp.Sub("config.json"), "--output", tmp.Sub("ckpt"));
        Assert.That(r.Code, Is.Zero, r.Out + r.Err);
        string text = File.ReadAllText(Path.Combine(tmp.Sub("ckpt"), "config.json"));
        using var doc = System.Text.Json.JsonDocument.Parse(text);
        var root = doc.RootElement;
        Assert.Multiple(() =>
        {
            foreach (var field in FloatFields)
            {
                string raw = root.GetProperty(field).GetRawText();
                Assert.That(raw, Does.Contain(".").Or.Contain("e"), $"{field} is written as a float (Python's json: 1.0, 1e-06), found {raw}");
            }
            Assert.That(root.GetProperty("v_dim_factor").GetRawText(), Is.EqualTo("1.0"));
            Assert.That(root.GetProperty("gate_soft_cap").GetRawText(), Is.EqualTo("15.0"));
            Assert.That(root.GetProperty("output_logit_soft_cap").GetRawText(), Is.EqualTo("30.0"));
            Assert.That(root.GetProperty("norm_eps").GetRawText(), Is.EqualTo("1e-06"));
            Assert.That(root.GetProperty("chunkwise_kernel").GetString(), Is.AnyOf("chunkwise--native_autograd", "parallel--native_autograd"));
            Assert.That(root.GetProperty("sequence_kernel").GetString(), Is.EqualTo("native_sequence__native"));
            Assert.That(root.GetProperty("step_kernel").GetString(), Is.EqualTo("native"));
            Assert.That(root.GetProperty("num_blocks").GetRawText(), Is.EqualTo("2"), "integers stay integers");
        });
        Assert.That(XLstmConfig.Parse(text, "written").VDimFactor, Is.EqualTo(1.0), "and it reads back");
    }

    [Test]
    public void EveryConfigWeWriteKeepsFloatsFloats()
    {
        var c = XLstmConfig.Parse("{\"v_dim_factor\": 1, \"gate_soft_cap\": 15, \"ffn_proj_factor\": 3}", "ints.json");
        using var doc = System.Text.Json.JsonDocument.Parse(c.ToJson());
        foreach (var field in FloatFields)
        {
            string raw = doc.RootElement.GetProperty(field).GetRawText();
            Assert.That(raw, Does.Contain(".").Or.Contain("e"), $"{field}: {raw}");
        }
        Assert.That(doc.RootElement.GetProperty("ffn_proj_factor").GetRawText(), Is.EqualTo("3.0"));
    }
}
