using System.Reflection;
using System.Text.Json.Nodes;
using System.Xml.Linq;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;

namespace XLstmOnnx.Tests;

/// <summary>
/// The contract assembly: what it depends on (nothing but the framework), what depends on it (the runtime, instead of
/// the exporter), the manifest's JSON (the format exports already on disk use) and the state layout against a graph.
/// </summary>
[TestFixture]
public class ContractTests
{
    /// <summary>
    /// xlstm_runtime.json as the exporter wrote it before the manifest moved to the contract (fused_bias, --dtype fp16
    /// --mlstm-kernels custom --last-logits-only --next-token), one field of each kind changed by hand: the format that
    /// exports on disk have, which must keep loading and be written again unchanged.
    /// </summary>
    private const string RecordedManifest = """
        {
          "format_version": 1,
          "producer": "XLstmOnnx 1.0.0.0",
          "model_file": "model.onnx",
          "external_data_file": "model.onnx.data",
          "dtype": "bf16",
          "quantization": "int4-block32",
          "state_dtype": "float32",
          "mlstm_kernels": "custom",
          "custom_op_domain": "ai.xlstm:1",
          "input": "input_ids",
          "attention_mask": true,
          "logits": "last",
          "hidden_states": false,
          "next_token": true,
          "num_layers": 2,
          "num_heads": 2,
          "qk_head_dim": 32,
          "v_head_dim": 32,
          "vocab_size": 128,
          "hidden_size": 64,
          "embedding_dim": 64,
          "chunk_size": 8,
          "max_inference_chunksize": 16384,
          "bos_token_id": 0,
          "eos_token_id": 2,
          "pad_token_id": null,
          "sampler_file": "sampler.onnx",
          "sampler_version": 1,
          "tokenizer_files": [
            "tokenizer.json",
            "tokenizer_config.json"
          ]
        }
        """;

    private static string[] References(Assembly a) => [.. a.GetReferencedAssemblies().Select(n => n.Name!)];

    [Test]
    public void TheContractReferencesTheFrameworkOnly()
    {
        var references = References(typeof(ModelManifest).Assembly);
        Assert.That(references, Is.Not.Empty);
        Assert.That(references.Where(n => !n.StartsWith("System", StringComparison.Ordinal) && n is not "netstandard" and not "mscorlib"), Is.Empty,
            $"XLstmOnnx.Contract references {string.Join(", ", references)}");
    }

    [Test]
    public void TheRuntimeDependsOnTheContractNotOnTheBuilder()
    {
        var references = References(typeof(XLstmSession).Assembly);
        Assert.That(references, Does.Contain("XLstmOnnx.Contract"));
        Assert.That(references, Does.Not.Contain("XLstmOnnx.GraphBuilder").And.Not.Contain("Google.Protobuf"), string.Join(", ", references));
        var project = XDocument.Load(Path.Combine(TestPaths.RepoRoot, "runtime", "XLstmOnnx.Runtime", "XLstmOnnx.Runtime.csproj"));
        var projectReferences = project.Descendants("ProjectReference").Select(e => e.Attribute("Include")!.Value.Replace('\\', '/')).ToList();
        Assert.That(projectReferences, Is.EqualTo(new[] { "../../graphbuilder/XLstmOnnx.Contract/XLstmOnnx.Contract.csproj" }));
    }

    [Test]
    public void ARecordedManifestLoadsAndIsWrittenAgainUnchanged()
    {
        using var tmp = TestPaths.Temp();
        File.WriteAllText(tmp.Sub(ModelManifest.FileName), RecordedManifest);
        var m = ModelManifest.Load(tmp.Path);
        Assert.Multiple(() =>
        {
            Assert.That((m.Dtype, m.StateDtype, m.MLstmKernels, m.Logits), Is.EqualTo((WeightDtype.Bf16, StateDtype.Float32, MLstmKernels.Custom, LogitsOutput.Last)));
            Assert.That((m.ExternalDataFile, m.Quantization, m.PadTokenId, m.EosTokenId), Is.EqualTo(("model.onnx.data", "int4-block32", (long?)null, (long?)2)));
            Assert.That(m.TokenizerFiles, Is.EqualTo(new[] { "tokenizer.json", "tokenizer_config.json" }));
            Assert.That(m.State, Is.EqualTo(new StateLayout(2, 2, 32, 32)));
            Assert.That(m.ToJson(), Is.EqualTo(RecordedManifest.ReplaceLineEndings("\n")));
        });
    }

    [Test]
    public void TheExporterWritesTheRecordedFormat()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "fused_bias"), tmp.Sub("m"),
            new ExportOptions { Dtype = WeightDtype.Fp16, MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true });
        var written = JsonNode.Parse(File.ReadAllText(tmp.Sub(Path.Combine("m", ModelManifest.FileName))))!.AsObject();
        var recorded = JsonNode.Parse(RecordedManifest)!.AsObject();
        Assert.That(written.Select(p => p.Key), Is.EqualTo(recorded.Select(p => p.Key)), "the same fields in the same order");
        // the fields changed by hand in the recording, and the producer's version, differ; every other value is the same
        // (sampler_version: the recording is of a version-1 sampler; exports with one still load, and sampling asks for a re-export)
        string[] edited = ["producer", "external_data_file", "dtype", "quantization", "pad_token_id", "tokenizer_files", "sampler_version"];
        foreach (var (key, value) in recorded.Where(p => !edited.Contains(p.Key)))
        {
            Assert.That(written[key]?.ToJsonString(), Is.EqualTo(value?.ToJsonString()), key);
        }
        Assert.That((string?)written["dtype"], Is.EqualTo("fp16"));
        Assert.That((int?)written["sampler_version"], Is.EqualTo(SamplerModel.Version));
        Assert.That((string?)written["producer"], Does.StartWith("XLstmOnnx "));
    }

    [TestCase("\"mlstm_kernels\": \"custom\"", "\"mlstm_kernels\": \"fused\"", "field 'mlstm_kernels' is \"fused\"; expected \"onnx\" or \"custom\"")]
    [TestCase("\"dtype\": \"bf16\"", "\"dtype\": 2", "field 'dtype' is 2; expected \"fp32\", \"fp16\" or \"bf16\"")]
    [TestCase("\"logits\": \"last\"", "\"logits\": \"Last\"", "field 'logits' is \"Last\"; expected \"all\" or \"last\"")]
    [TestCase("\"state_dtype\": \"float32\"", "\"state_dtype\": \"bfloat16\"", "field 'state_dtype' is \"bfloat16\"; expected \"float32\" or \"bf16\"")]
    public void AnUnknownEnumValueNamesTheFieldAndTheValues(string field, string replacement, string message)
    {
        using var tmp = TestPaths.Temp();
        string path = tmp.Sub(ModelManifest.FileName);
        string edited = RecordedManifest.Replace(field, replacement, StringComparison.Ordinal);
        Assert.That(edited, Is.Not.EqualTo(RecordedManifest), $"the recording has {field}");
        File.WriteAllText(path, edited);
        var e = Assert.Throws<XLstmOnnxException>(() => ModelManifest.Load(tmp.Path))!;
        Assert.That(e.Message, Is.EqualTo($"{path}: {message}."));
    }

    [Test]
    public void EveryFieldIsNamedByItsProperty()
    {
        // every field set (a field that is left out when null is written then too)
        var json = JsonNode.Parse(new ModelManifest { MixedModelFile = "model.mixed.onnx" }.ToJson())!.AsObject().Select(p => p.Key).ToList();
        var properties = typeof(ModelManifest).GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.Name != nameof(ModelManifest.State)).Select(p => ModelManifest.Field(p.Name)).ToList();
        Assert.That(properties, Is.EqualTo(json));
        Assert.That(ModelManifest.Field(nameof(ModelManifest.MLstmKernels)), Is.EqualTo("mlstm_kernels"));
        Assert.That(ModelManifest.Field(nameof(ModelManifest.QkHeadDim)), Is.EqualTo("qk_head_dim"));
        Assert.Throws<ArgumentOutOfRangeException>(() => ModelManifest.Field(nameof(ModelManifest.State)));
    }

    [Test]
    public void TheEnumsJsonNamesAreTheManifestStrings()
    {
        Assert.Multiple(() =>
        {
            Assert.That(ContractNames.JsonNames<WeightDtype>(), Is.EqualTo(new[] { "fp32", "fp16", "bf16" }));
            Assert.That(ContractNames.JsonNames<MLstmKernels>(), Is.EqualTo(new[] { "onnx", "custom" }));
            Assert.That(ContractNames.JsonNames<LogitsOutput>(), Is.EqualTo(new[] { "all", "last" }));
            Assert.That(ContractNames.JsonNames<StateDtype>(), Is.EqualTo(new[] { "float32", "bf16" }));
        });
    }

    [Test]
    public void TheStateLayoutIsTheGraphs()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "tied_dims"), tmp.Sub("m"), new ExportOptions());
        using var session = XLstmSession.Load(tmp.Sub("m"));
        var layout = session.Manifest.State;
        Assert.That(layout.Layers, Is.GreaterThan(1), "a fixture with several layers");
        var inputs = session.Session.InputMetadata;
        var outputs = session.Session.OutputMetadata;
        var past = layout.PastNames();
        var present = layout.PresentNames();
        Assert.That(past, Has.Length.EqualTo(layout.TensorCount));
        Assert.That(inputs.Keys.Where(k => k.StartsWith("past_state.", StringComparison.Ordinal)), Is.EquivalentTo(past));
        Assert.That(outputs.Keys.Where(k => k.StartsWith("present_state.", StringComparison.Ordinal)), Is.EquivalentTo(present));
        for (int i = 0; i < layout.TensorCount; i++)
        {
            int layer = StateLayout.LayerOf(i);
            var part = StateLayout.PartOf(i);
            Assert.That(layout.Index(layer, part), Is.EqualTo(i));
            Assert.That(past[i], Is.EqualTo($"past_state.{layer}.{StateLayout.Name(part)}"));
            Assert.That(present[i], Is.EqualTo($"present_state.{layer}.{StateLayout.Name(part)}"));
            // the graph's batch axis is symbolic (-1 in ONNX Runtime's metadata); the rest is the layout's row shape
            Assert.That(inputs[past[i]].Dimensions.Select(d => (long)d), Is.EqualTo(layout.Shape(part, -1)), past[i]);
            Assert.That(outputs[present[i]].Dimensions.Select(d => (long)d), Is.EqualTo(layout.Shape(part, -1)), present[i]);
        }
        Assert.That(layout.RowBytes, Is.EqualTo(layout.Layers * 4 * layout.Heads * (layout.QkHeadDim * layout.VHeadDim + layout.QkHeadDim + 1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => layout.Index(layout.Layers, StatePart.C));
        Assert.Throws<ArgumentOutOfRangeException>(() => layout.Index(0, (StatePart)3));
    }
}
