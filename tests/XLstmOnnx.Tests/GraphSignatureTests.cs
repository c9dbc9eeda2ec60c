using System.Text.Json;
using System.Text.Json.Nodes;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Architecture;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.GraphBuilder.Graph;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.Tests;

/// <summary>
/// The exported graph's shape is locked: every fixture and the shipped model, in both kernel modes and the export
/// variants that change the graph, builds a graph whose <see cref="GraphSignature"/> (node counts, op types, contract,
/// wiring; names left out) equals the one recorded in tests/golden/graph_signatures.json. A refactor of the builder
/// may rename nodes; anything else shows up here. After an intended change of the graph, re-record with
/// <c>XLSTM_RECORD_GRAPH_SIGNATURES=1 dotnet test --filter GraphSignatureTests</c> and review the diff.
/// </summary>
[TestFixture]
public class GraphSignatureTests
{
    private static string GoldenPath => Path.Combine(TestPaths.RepoRoot, "tests", "golden", "graph_signatures.json");
    private static bool Recording => Environment.GetEnvironmentVariable("XLSTM_RECORD_GRAPH_SIGNATURES") == "1";

    /// <summary>The export variants that change the graph: kernels, dtypes, outputs, inputs, quantization.</summary>
    private static readonly (string Name, ExportOptions Options)[] Variants =
    [
        ("onnx fp32", new ExportOptions()),
        ("custom fp32", new ExportOptions { MLstmKernels = MLstmKernels.Custom }),
        ("onnx fp16", new ExportOptions { Dtype = WeightDtype.Fp16 }),
        ("custom fp16", new ExportOptions { Dtype = WeightDtype.Fp16, MLstmKernels = MLstmKernels.Custom }),
        ("onnx bf16", new ExportOptions { Dtype = WeightDtype.Bf16 }),
        ("custom bf16", new ExportOptions { Dtype = WeightDtype.Bf16, MLstmKernels = MLstmKernels.Custom }),
        ("custom bf16 gemm", new ExportOptions { Dtype = WeightDtype.Bf16, MLstmKernels = MLstmKernels.Custom, LinearKernels = LinearKernels.Onnx }),
        ("onnx last next hidden", new ExportOptions { LastLogitsOnly = true, NextToken = true, HiddenStates = true }),
        ("custom last next hidden", new ExportOptions { LastLogitsOnly = true, NextToken = true, HiddenStates = true, MLstmKernels = MLstmKernels.Custom }),
        ("onnx embeds no-mask", new ExportOptions { InputsEmbeds = true, AttentionMask = false }),
        ("custom embeds no-mask", new ExportOptions { InputsEmbeds = true, AttentionMask = false, MLstmKernels = MLstmKernels.Custom }),
        ("onnx int4 bf16", new ExportOptions { QuantizeBits = 4, Dtype = WeightDtype.Bf16 }),
        ("custom int4", new ExportOptions { QuantizeBits = 4, MLstmKernels = MLstmKernels.Custom }),
    ];

    public static IEnumerable<TestCaseData> Models() =>
        Directory.EnumerateDirectories(TestPaths.Fixtures)
            .Append(Path.Combine(TestPaths.RepoRoot, "models", "kjv-xlstm"))
            .Where(d => File.Exists(Path.Combine(d, "config.json")))
            .Order(StringComparer.Ordinal)
            .Select(d => new TestCaseData(d).SetName($"graph signature {Path.GetFileName(d)}"));

    private static GraphSignature Build(string dir, ExportOptions options)
    {
        using var ckpt = HfCheckpoint.Open(dir);
        var weights = new WeightTable(ckpt.Config).Bind(ckpt.Tensors, dir);
        return GraphSignature.Of(XLstmGraphBuilder.Build(ckpt.Config, weights, options));
    }

    private static string Key(string dir, string variant) => $"{Path.GetFileName(dir)} {variant}";

    [TestCaseSource(nameof(Models))]
    public void GraphIsTheRecordedOne(string dir)
    {
        var golden = File.Exists(GoldenPath) ? JsonNode.Parse(File.ReadAllText(GoldenPath))!["cases"]!.AsObject() : new JsonObject();
        var actual = Variants.ToDictionary(v => Key(dir, v.Name), v => Build(dir, v.Options));
        if (Recording)
        {
            Record(actual);
            Assert.Ignore($"recorded {actual.Count} signatures into {GoldenPath}");
        }
        Assert.Multiple(() =>
        {
            foreach (var (key, sig) in actual)
            {
                var expected = golden[key];
                Assert.That(expected, Is.Not.Null, $"{key}: no recorded signature in {GoldenPath}");
                if (expected is null) continue;
                Assert.That(sig.Nodes, Is.EqualTo((int)expected["nodes"]!), $"{key}: top-level node count");
                Assert.That(sig.AllNodes, Is.EqualTo((int)expected["all_nodes"]!), $"{key}: node count with Loop bodies");
                Assert.That(sig.Ops, Is.EquivalentTo(expected["ops"]!.AsObject().ToDictionary(kv => kv.Key, kv => (int)kv.Value!)), $"{key}: op types and counts");
                Assert.That(sig.Inputs, Is.EqualTo(expected["inputs"]!.AsArray().Select(x => (string)x!)), $"{key}: graph inputs");
                Assert.That(sig.Outputs, Is.EqualTo(expected["outputs"]!.AsArray().Select(x => (string)x!)), $"{key}: graph outputs");
                Assert.That(sig.Constants, Is.EqualTo((int)expected["constants"]!), $"{key}: constant initializers");
                Assert.That(sig.Weights, Is.EqualTo((int)expected["weights"]!), $"{key}: weight initializers");
                Assert.That(sig.Structure, Is.EqualTo((string)expected["structure"]!), $"{key}: wiring (ops, attributes, constants and sources of every input)");
            }
        });
    }

    [Test]
    public void EveryRecordedSignatureIsStillChecked()
    {
        if (Recording) Assert.Ignore("recording");
        var recorded = JsonNode.Parse(File.ReadAllText(GoldenPath))!["cases"]!.AsObject().Select(kv => kv.Key);
        var checkedKeys = Models().Select(m => (string)m.Arguments[0]!).SelectMany(d => Variants.Select(v => Key(d, v.Name)));
        Assert.That(recorded, Is.EquivalentTo(checkedKeys), $"{GoldenPath} lists exactly the fixtures and variants the test builds");
    }

    // ---- the signature itself: blind to names, not to anything else ------------------------------------------

    /// <summary>x ─► Mul(x, 2) ─► Add(·, x) ─► Identity; names from <paramref name="prefix"/>.</summary>
    private static OnnxGraph Tiny(string prefix, float factor = 2f, bool rewire = false, bool extra = false)
    {
        var g = new OnnxGraph("tiny");
        string x = g.Input("x", DataType.Float, "n");
        string m = g.Op($"{prefix}/Mul", "Mul", [x, g.Constant(factor)]);
        string a = g.Op($"{prefix}/Add", "Add", rewire ? [m, m] : [m, x]);
        if (extra) a = g.Op($"{prefix}/Neg", "Neg", [a]);
        g.Output("y", a, DataType.Float, "n");
        return g;
    }

    [Test]
    public void SignatureIgnoresNamesButSeesStructure()
    {
        var baseline = GraphSignature.Of(Tiny("/a"));
        Assert.Multiple(() =>
        {
            Assert.That(GraphSignature.Of(Tiny("/renamed/elsewhere")).Structure, Is.EqualTo(baseline.Structure), "renamed nodes");
            Assert.That(GraphSignature.Of(Tiny("/a", rewire: true)).Structure, Is.Not.EqualTo(baseline.Structure), "an input from another node");
            Assert.That(GraphSignature.Of(Tiny("/a", factor: 3f)).Structure, Is.Not.EqualTo(baseline.Structure), "another constant value");
            var extra = GraphSignature.Of(Tiny("/a", extra: true));
            Assert.That(extra.Nodes, Is.EqualTo(baseline.Nodes + 1), "an added node counts");
            Assert.That(extra.Structure, Is.Not.EqualTo(baseline.Structure), "an added node");
        });
    }

    private static readonly object RecordLock = new();

    private static void Record(Dictionary<string, GraphSignature> signatures)
    {
        lock (RecordLock) RecordLocked(signatures);
    }

    private static void RecordLocked(Dictionary<string, GraphSignature> signatures)
    {
        var root = File.Exists(GoldenPath) ? JsonNode.Parse(File.ReadAllText(GoldenPath))!.AsObject() : new JsonObject();
        root["about"] = "Graph signatures (names left out) of every fixture and export variant; see tests/XLstmOnnx.Tests/GraphSignatureTests.cs.";
        var cases = root["cases"]?.AsObject() ?? new JsonObject();
        foreach (var (key, s) in signatures)
        {
            var ops = new JsonObject();
            foreach (var (op, n) in s.Ops) ops[op] = n;
            cases[key] = new JsonObject
            {
                ["nodes"] = s.Nodes,
                ["all_nodes"] = s.AllNodes,
                ["ops"] = ops,
                ["inputs"] = new JsonArray([.. s.Inputs.Select(i => (JsonNode)i)]),
                ["outputs"] = new JsonArray([.. s.Outputs.Select(o => (JsonNode)o)]),
                ["constants"] = s.Constants,
                ["weights"] = s.Weights,
                ["structure"] = s.Structure,
            };
        }
        var sorted = new JsonObject();
        foreach (var kv in cases.OrderBy(kv => kv.Key, StringComparer.Ordinal)) sorted[kv.Key] = kv.Value?.DeepClone();
        root["cases"] = sorted;
        File.WriteAllText(GoldenPath, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }
}
