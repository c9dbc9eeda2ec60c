using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Architecture;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.GraphBuilder.Graph;
using XLstmOnnx.GraphBuilder.Onnx;
using XLstmOnnx.Runtime;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.Tests;

/// <summary>
/// Exports with <c>--mlstm-kernels custom</c> (one ai.xlstm::MLstmChunkwise node per layer, CPU kernels of
/// libxlstm_customops.so, which build.cake builds from customops/ and copies beside these tests) verify against
/// transformers like the standard-op exports; the op checks its inputs; a missing library says what to build.
/// </summary>
[TestFixture]
public class CustomOpTests
{
    // The same bar as the standard-op exports (FixtureTests): fp32 on CPU.
    private const double Atol = 1e-4, Rtol = 1e-3;

    private static string Library => CustomOpLibrary.Find() ?? throw new AssertionException(
        $"{CustomOpLibrary.FileName} is not beside the tests: run them through ./build.sh --target=Test (it builds customops/ and copies the library).");

    [TestCaseSource(typeof(FixtureTests), nameof(FixtureTests.Fixtures))]
    public void CustomOpExportVerifies(string dir)
    {
        _ = Library;
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(dir, tmp.Sub("model"), new ExportOptions { MLstmKernels = MLstmKernels.Custom });
        using var session = XLstmSession.Load(tmp.Sub("model"));
        Assert.That(session.Manifest.MLstmKernels, Is.EqualTo(MLstmKernels.Custom));
        Assert.That(session.Manifest.CustomOpDomain, Is.EqualTo("ai.xlstm:1"));
        var results = ReferenceVerifier.Verify(session, Path.Combine(dir, "reference.safetensors"), Atol, Rtol);
        Assert.Multiple(() =>
        {
            Assert.That(results.Select(r => r.Check), Does.Contain("step_logits").And.Contain("greedy_ids"));
            foreach (var r in results)
            {
                Assert.That(r.Violations, Is.Zero, $"{r.Case} {r.Check}: max abs {r.MaxAbsError:E2}, max rel {r.MaxRelError:E2} {r.Note}");
            }
        });
    }

    /// <summary>
    /// The projections as ai.xlstm::Linear (on the CPU its kernel sums each row on its own, in k order) verify against
    /// transformers at the fp32 bar, every projection of the graph goes through the op, and decode steps agree with
    /// the Gemm export to float32 rounding.
    /// </summary>
    [TestCaseSource(typeof(FixtureTests), nameof(FixtureTests.Fixtures))]
    public void LinearOpExportVerifies(string dir)
    {
        _ = Library;
        using var tmp = TestPaths.Temp();
        var linearKernels = Path.GetFileName(dir).Length % 2 == 0 ? LinearKernels.Custom : LinearKernels.BatchInvariant; // both modes, same CPU kernel
        var result = OnnxExporter.Export(dir, tmp.Sub("model"), new ExportOptions { MLstmKernels = MLstmKernels.Custom, LinearKernels = linearKernels });
        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(result.ModelPath));
        using var session = XLstmSession.Load(tmp.Sub("model"));
        var results = ReferenceVerifier.Verify(session, Path.Combine(dir, "reference.safetensors"), Atol, Rtol);
        Assert.Multiple(() =>
        {
            Assert.That(model.Graph.Node.Select(n => n.OpType), Has.None.EqualTo("Gemm"), "every projection is a Linear node");
            var linear = model.Graph.Node.Where(n => n.OpType == CustomOps.Linear).ToList();
            int blocks = model.Graph.Node.Count(n => n.OpType == CustomOps.Chunkwise);
            // per block: qkvo_proj, if_gate, out_proj, proj_up_gate_z, proj_down; then lm_head
            Assert.That(linear, Has.Count.EqualTo(5 * blocks + 1));
            Assert.That(linear.Select(n => n.Domain), Is.All.EqualTo(CustomOps.Domain));
            Assert.That(linear.Select(n => n.Input[2]), Is.All.EqualTo(GraphNames.InputIds), "the sequence length comes from input_ids");
            Assert.That(linear.Select(n => n.Attribute.Single(a => a.Name == "batch_invariant").I),
                Is.All.EqualTo(linearKernels == LinearKernels.BatchInvariant ? 1 : 0));
            Assert.That(linear.Single(n => n.Name == "/model/blocks.0/mlstm/if_gate/Linear").Input, Has.Count.EqualTo(4), "the gate projection keeps its bias");
            foreach (var r in results)
            {
                Assert.That(r.Violations, Is.Zero, $"{r.Case} {r.Check}: max abs {r.MaxAbsError:E2}, max rel {r.MaxRelError:E2} {r.Note}");
            }
        });
    }

    /// <summary>With last-position logits the lm_head's Linear gets [B, H] rows for a [B, S] input (a shape its check once refused).</summary>
    [Test]
    public void LinearOpWithLastLogitsOnlyVerifies()
    {
        _ = Library;
        string dir = Path.Combine(TestPaths.Fixtures, "segmented");
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(dir, tmp.Sub("model"), new ExportOptions
        {
            MLstmKernels = MLstmKernels.Custom, LinearKernels = LinearKernels.BatchInvariant, LastLogitsOnly = true, NextToken = true,
        });
        using var session = XLstmSession.Load(tmp.Sub("model"));
        var results = ReferenceVerifier.Verify(session, Path.Combine(dir, "reference.safetensors"), Atol, Rtol);
        Assert.That(results, Is.Not.Empty);
        foreach (var r in results) Assert.That(r.Violations, Is.Zero, $"{r.Case} {r.Check}: max abs {r.MaxAbsError:E2}");
    }

    [Test]
    public void LinearKernelsDefaultToOursForHalfPrecisionCustomExportsAndNeedTheCustomCell()
    {
        Assert.Multiple(() =>
        {
            Assert.That(new ExportOptions { MLstmKernels = MLstmKernels.Custom, Dtype = WeightDtype.Bf16 }.Linear, Is.EqualTo(LinearKernels.Custom));
            Assert.That(new ExportOptions { MLstmKernels = MLstmKernels.Custom, Dtype = WeightDtype.Fp16 }.Linear, Is.EqualTo(LinearKernels.Custom));
            Assert.That(new ExportOptions { MLstmKernels = MLstmKernels.Custom, Dtype = WeightDtype.Fp32 }.Linear, Is.EqualTo(LinearKernels.Onnx), "float32: Gemm");
            Assert.That(new ExportOptions { MLstmKernels = MLstmKernels.Custom, Dtype = WeightDtype.Bf16, QuantizeBits = 4 }.Linear, Is.EqualTo(LinearKernels.Onnx),
                "int4: MatMulNBits and Gemm");
            Assert.That(new ExportOptions { Dtype = WeightDtype.Bf16 }.Linear, Is.EqualTo(LinearKernels.Onnx), "the standard-op cell: Gemm");
            Assert.That(new ExportOptions().Linear, Is.EqualTo(LinearKernels.Onnx));
            Assert.That(new ExportOptions { MLstmKernels = MLstmKernels.Custom, Dtype = WeightDtype.Bf16, LinearKernels = LinearKernels.BatchInvariant }.Linear,
                Is.EqualTo(LinearKernels.BatchInvariant));
        });
        Assert.DoesNotThrow(() => new ExportOptions { LinearKernels = LinearKernels.Onnx }.Validate(), "onnx needs no library");
        var e = Assert.Throws<XLstmOnnxException>(() => new ExportOptions { LinearKernels = LinearKernels.BatchInvariant }.Validate())!;
        Assert.That(e.Message, Does.Contain("ExportOptions.LinearKernels batch-invariant").And.Contain("ExportOptions.MLstmKernels custom").And.Contain("found onnx"));
    }

    [Test]
    public void CustomOpGraphHasOneNodePerLayerAndNoControlFlow()
    {
        using var tmp = TestPaths.Temp();
        var result = OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "segmented"), tmp.Sub("model"),
            new ExportOptions { MLstmKernels = MLstmKernels.Custom });
        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(result.ModelPath));
        var cells = model.Graph.Node.Where(n => n.OpType == CustomOps.Chunkwise).ToList();
        Assert.Multiple(() =>
        {
            Assert.That(cells, Has.Count.EqualTo(2), "one cell per block");
            Assert.That(cells.Select(n => n.Domain), Is.All.EqualTo("ai.xlstm"));
            Assert.That(cells[0].Name, Is.EqualTo("/model/blocks.0/mlstm/cell/MLstmChunkwise"));
            Assert.That(cells[0].Attribute.Single(a => a.Name == "chunk_size").I, Is.EqualTo(8));
            Assert.That(cells[0].Attribute.Single(a => a.Name == "max_inference_chunksize").I, Is.EqualTo(20));
            Assert.That(model.Graph.Node.Select(n => n.OpType), Has.None.AnyOf("Loop", "If", "Scan"), "CUDA graphs need a graph without control flow");
            Assert.That(model.OpsetImport.Any(o => o.Domain == "ai.xlstm" && o.Version == 1), "opset import of ai.xlstm v1");
            // the fused fast path: one gates, one SwiGLU and one head-norm node per block; every residual add but the
            // last fused into the norm after it
            foreach (var op in new[] { CustomOps.Gates, CustomOps.SwiGlu, CustomOps.HeadNormGate })
            {
                Assert.That(model.Graph.Node.Count(n => n.OpType == op && n.Domain == "ai.xlstm"), Is.EqualTo(2), op);
            }
            Assert.That(model.Graph.Node.Count(n => n.OpType == "SkipSimplifiedLayerNormalization" && n.Domain == "com.microsoft"), Is.EqualTo(3));
            Assert.That(model.Graph.Node.Count(n => n.OpType == "Add" && n.Name.EndsWith("_residual/Add", StringComparison.Ordinal)), Is.EqualTo(1),
                "only the last block's FFN residual stays an Add");
            Assert.That(model.Graph.Node.Where(n => n.Name.Contains("/mlstm/", StringComparison.Ordinal) || n.Name.Contains("/ffn/", StringComparison.Ordinal))
                .Select(n => n.OpType), Has.None.AnyOf("Tanh", "Where", "Sigmoid", "LayerNormalization"), "cap, mask, gate and norm chains are fused");
        });
    }

    [Test]
    public void FusedOpsKeepPaddedRowsExactAndTheDeviceArgMaxAgrees()
    {
        _ = Library;
        string dir = Path.Combine(TestPaths.Fixtures, "fused_bias");
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(dir, tmp.Sub("m"), new ExportOptions { MLstmKernels = MLstmKernels.Custom, LastLogitsOnly = true, NextToken = true });
        using var session = XLstmSession.Load(tmp.Sub("m"));
        Assert.That(session.Manifest.NextToken, Is.True);
        var options = new XLstmOnnx.Runtime.Generation.GenerationOptions { Greedy = true, MaxNewTokens = 10, IgnoreEos = true };
        int[][] prompts = [[99, 44, 86, 93, 87, 38, 30, 45, 48, 85, 63], [5, 17, 3]];
        var alone = prompts.Select(p =>
        {
            using var g = new XLstmOnnx.Runtime.Generation.Generator(session, 1);
            return g.Generate([p], options).Tokens[0];
        }).ToArray();
        using var batch = new XLstmOnnx.Runtime.Generation.Generator(session, 2);
        batch.Append([.. prompts.Select(p => (IReadOnlyList<int>)p)]);
        for (int r = 0; r < 2; r++)
        {
            Assert.That(batch.GreedyNext(r), Is.EqualTo(XLstmOnnx.Runtime.Generation.Sampler.ArgMax(batch.LastLogits(r))), $"row {r}: next_token is the argmax");
        }
        batch.Reset();
        var together = batch.Generate([.. prompts.Select(p => (IReadOnlyList<int>)p)], options).Tokens;
        // the 3-token prompt is left-padded by 8: MLstmGates must turn those positions into exact no-ops for the state
        Assert.That(together, Is.EqualTo(alone));
    }

    [Test]
    public void CudaGraphOptionsAreCheckedBeforeAnythingLoads()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "fused_bias"), tmp.Sub("onnx"), new ExportOptions());
        var cpu = Assert.Throws<XLstmOnnxException>(() => XLstmSession.Load(tmp.Sub("onnx"), new RuntimeOptions { CudaGraph = true }));
        Assert.That(cpu!.Message, Does.StartWith("RuntimeOptions.CudaGraph needs RuntimeOptions.Device Cuda; found Cpu"));
        Assert.That(cpu.Parameter, Is.EqualTo("RuntimeOptions.CudaGraph"));
        var loops = Assert.Throws<XLstmOnnxException>(() => XLstmSession.Load(tmp.Sub("onnx"), new RuntimeOptions { CudaGraph = true, Device = ExecutionDevice.Cuda }));
        Assert.That(loops!.Message, Does.StartWith("RuntimeOptions.CudaGraph: ").And.Contain("mlstm_kernels \"onnx\"").And.Contain("ExportOptions.MLstmKernels Custom"));
        Assert.That(loops.Parameter, Is.EqualTo("RuntimeOptions.CudaGraph"));
    }

    [Test]
    public void CustomOpsMatchTheStandardOpCellStepByStep()
    {
        _ = Library;
        string dir = Path.Combine(TestPaths.Fixtures, "fused_bias");
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(dir, tmp.Sub("onnx"), new ExportOptions());
        OnnxExporter.Export(dir, tmp.Sub("custom"), new ExportOptions { MLstmKernels = MLstmKernels.Custom });
        using var a = XLstmSession.Load(tmp.Sub("onnx"));
        using var b = XLstmSession.Load(tmp.Sub("custom"));
        var sa = a.CreateState(2);
        var sb = b.CreateState(2);
        long[] prompt = [5, 17, 99, 3, 3, 42, 7, 8, 120, 1, 0, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82];
        var la = a.Run(prompt, prompt.Length / 2, sa);
        var lb = b.Run(prompt, prompt.Length / 2, sb);
        // the same float32 math in another order (Loop of standard ops vs one C++ kernel)
        Assert.That(lb.Values, Is.EqualTo(la.Values).Within(2e-5), "prompt logits");
        for (int t = 0; t < 5; t++)
        {
            long[] step = [(t * 7 + 3) % 128, (t * 11 + 5) % 128];
            la = a.Run(step, 1, sa);
            lb = b.Run(step, 1, sb);
            Assert.That(lb.Values, Is.EqualTo(la.Values).Within(2e-5), $"step {t} logits");
        }
    }

    [Test]
    public void MissingLibraryFailsSayingWhatToBuild()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "single_basic"), tmp.Sub("model"), new ExportOptions { MLstmKernels = MLstmKernels.Custom });
        string? saved = Environment.GetEnvironmentVariable(CustomOpLibrary.EnvironmentVariable);
        try
        {
            Environment.SetEnvironmentVariable(CustomOpLibrary.EnvironmentVariable, tmp.Sub("nowhere/libxlstm_customops.so"));
            var e = Assert.Throws<XLstmOnnxException>(() => XLstmSession.Load(tmp.Sub("model")).Dispose())!;
            Assert.That(e.Message, Does.Contain(tmp.Sub("model")).And.Contain("mLSTM custom ops")
                .And.Contain(CustomOpLibrary.EnvironmentVariable).And.Contain("customops/").And.Contain("ExportOptions.MLstmKernels Onnx"));
        }
        finally
        {
            Environment.SetEnvironmentVariable(CustomOpLibrary.EnvironmentVariable, saved);
        }
        // nothing set and nothing beside the application: not found (Register then throws with BuildHint)
        Assert.That(CustomOpLibrary.Find(null, [tmp.Path]), Is.Null);
        Assert.That(CustomOpLibrary.BuildHint, Does.Contain("./build.sh --target=Build").And.Contain("cmake -S customops"));
    }

    // ---- the op on its own: one node, inputs given by hand ----------------------------------------------------

    /// <summary>A model of one ai.xlstm node with free dims; q, k, v and h in <paramref name="qkv"/>.</summary>
    private static InferenceSession OneNode(string op, DataType qkv, SessionOptions options, long chunk = 4, string? without = null)
    {
        var g = new OnnxGraph("mlstm");
        string[] names = ["q", "k", "v", "igate", "fgate", "C", "n", "m"];
        for (int i = 0; i < names.Length; i++) g.Input(names[i], i < 3 ? qkv : DataType.Float, null);
        Attr[] attrs = [Attr.Int("chunk_size", chunk), Attr.Int("max_inference_chunksize", 16384), Attr.Float("eps", 1e-6)];
        var outs = g.Node($"/{op}", op, names, 4, CustomOps.Domain, [.. attrs.Where(a => a.Proto.Name != without)]);
        string[] outNames = ["h", "C_out", "n_out", "m_out"];
        for (int i = 0; i < 4; i++) g.Output(outNames[i], outs[i], i == 0 ? qkv : DataType.Float, null);
        var model = new ModelProto { IrVersion = ExportOptions.IrVersion, Graph = g.Proto };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = ExportOptions.Opset });
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = CustomOps.Domain, Version = CustomOps.DomainVersion });
        return new InferenceSession(model.ToByteArray(), options);
    }

    private static SessionOptions OptionsWithLibrary()
    {
        var options = new SessionOptions();
        options.RegisterCustomOpLibrary(Library);
        return options;
    }

    /// <summary>Inputs for [B, NH, S, DQK] / DV, deterministic; states zero.</summary>
    private static Dictionary<string, (float[] Data, long[] Shape)> Inputs(long b, long nh, long s, long dqk, long dv, long kDqk = -1)
    {
        var rng = new Random(7);
        float[] R(long n, double scale = 1.0, double shift = 0.0) => Enumerable.Range(0, (int)n).Select(_ => (float)(shift + scale * (rng.NextDouble() * 2 - 1))).ToArray();
        long kd = kDqk < 0 ? dqk : kDqk;
        return new()
        {
            ["q"] = (R(b * nh * s * dqk), [b, nh, s, dqk]),
            ["k"] = (R(b * nh * s * kd), [b, nh, s, kd]),
            ["v"] = (R(b * nh * s * dv), [b, nh, s, dv]),
            ["igate"] = (R(b * nh * s, 2, -3), [b, nh, s]),
            ["fgate"] = (R(b * nh * s, 2, 4), [b, nh, s]),
            ["C"] = (new float[b * nh * dqk * dv], [b, nh, dqk, dv]),
            ["n"] = (new float[b * nh * dqk], [b, nh, dqk]),
            ["m"] = (new float[b * nh], [b, nh, 1]),
        };
    }

    private static float[][] RunFloat(InferenceSession session, Dictionary<string, (float[] Data, long[] Shape)> inputs)
    {
        var values = inputs.Select(kv => OrtValue.CreateTensorValueFromMemory(kv.Value.Data, kv.Value.Shape)).ToList();
        try
        {
            using var outputs = session.Run(new RunOptions(), inputs.Keys.ToList(), values, ["h", "C_out", "n_out", "m_out"]);
            return outputs.Select(o => o.GetTensorDataAsSpan<float>().ToArray()).ToArray();
        }
        finally
        {
            foreach (var v in values) v.Dispose();
        }
    }

    [Test]
    public void ShapeErrorsNameTheOpTheInputAndBothShapes()
    {
        using var options = OptionsWithLibrary();
        using var session = OneNode("MLstmChunkwise", DataType.Float, options);
        var e = Assert.Throws<OnnxRuntimeException>(() => RunFloat(session, Inputs(1, 2, 5, 4, 6, kDqk: 8)))!;
        Assert.That(e.Message, Does.Contain("MLstmChunkwise").And.Contain("input 'k'").And.Contain("[1,2,5,8]").And.Contain("[1,2,5,4]"));

        var bad = Inputs(1, 2, 5, 4, 6);
        bad["m"] = (new float[2], [1, 2]);
        e = Assert.Throws<OnnxRuntimeException>(() => RunFloat(session, bad))!;
        Assert.That(e.Message, Does.Contain("MLstmChunkwise").And.Contain("input 'm'").And.Contain("[1,2]").And.Contain("[1,2,1]"));

        using var step = OneNode("MLstmStep", DataType.Float, options);
        e = Assert.Throws<OnnxRuntimeException>(() => RunFloat(step, Inputs(1, 2, 3, 4, 6)))!;
        Assert.That(e.Message, Does.Contain("MLstmStep").And.Contain("input 'q'").And.Contain("[1,2,3,4]").And.Contain("S = 1"));
    }

    /// <summary>Runs one ai.xlstm node of <paramref name="op"/> on float inputs (int64 for names ending in "mask") and returns its error.</summary>
    private static OnnxRuntimeException LanesError(string op, (string Name, long[] Shape)[] inputs, int outputs, params Attr[] attrs)
    {
        using var options = OptionsWithLibrary();
        var g = new OnnxGraph("lanes");
        foreach (var (name, _) in inputs) g.Input(name, name.EndsWith("mask", StringComparison.Ordinal) ? DataType.Int64 : DataType.Float, null);
        var outs = g.Node($"/{op}", op, [.. inputs.Select(i => i.Name)], outputs, CustomOps.Domain, attrs);
        for (int i = 0; i < outs.Length; i++) g.Output($"out_{i}", outs[i], DataType.Float, null);
        var model = new ModelProto { IrVersion = ExportOptions.IrVersion, Graph = g.Proto };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = ExportOptions.Opset });
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = CustomOps.Domain, Version = CustomOps.DomainVersion });
        using var session = new InferenceSession(model.ToByteArray(), options);
        var values = inputs.Select(i => i.Name.EndsWith("mask", StringComparison.Ordinal)
            ? OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, (int)i.Shape.Aggregate(1L, (a, b) => a * b)).ToArray(), i.Shape)
            : OrtValue.CreateTensorValueFromMemory(new float[i.Shape.Aggregate(1L, (a, b) => a * b)], i.Shape)).ToList();
        try
        {
            return Assert.Throws<OnnxRuntimeException>(() => session.Run(new RunOptions(), [.. inputs.Select(i => i.Name)], values, [.. outs.Select((_, i) => $"out_{i}")]).Dispose())!;
        }
        finally
        {
            foreach (var v in values) v.Dispose();
        }
    }

    [Test]
    public void LaneOpShapeErrorsNameTheOpTheInputAndBothShapes()
    {
        // B = 2 decode rows, P = 1 prompt row of L = 3 tokens: 5 stream rows; NH = 2, DQK = 4, DV = 6
        (string, long[])[] Cell(long rows) =>
        [
            ("q", [rows, 8]), ("k", [rows, 8]), ("v", [rows, 12]),
            ("decode_igate", [2, 2, 1]), ("decode_fgate", [2, 2, 1]), ("decode_C", [2, 2, 4, 6]), ("decode_n", [2, 2, 4]), ("decode_m", [2, 2, 1]),
            ("prompt_igate", [1, 2, 3]), ("prompt_fgate", [1, 2, 3]), ("prompt_C", [1, 2, 4, 6]), ("prompt_n", [1, 2, 4]), ("prompt_m", [1, 2, 1]),
        ];
        Attr[] cellAttrs = [Attr.Int("chunk_size", 4), Attr.Int("max_inference_chunksize", 16384), Attr.Float("eps", 1e-6)];
        var e = LanesError(CustomOps.Lanes, Cell(6), 8, cellAttrs);
        Assert.That(e.Message, Does.Contain("MLstmLanes: input 'q' has shape [6,8]").And.Contain("expected [5,8] = [B + P·L, NH·DQK]"));
        var badState = Cell(5);
        badState[10] = ("prompt_C", [1, 2, 4, 5]);
        e = LanesError(CustomOps.Lanes, badState, 8, cellAttrs);
        Assert.That(e.Message, Does.Contain("MLstmLanes: input 'prompt_C' has shape [1,2,4,5]").And.Contain("[1,2,4,6]"));

        e = LanesError(CustomOps.GatesLanes, [("gates", [6, 4]), ("decode_mask", [2, 1]), ("prompt_mask", [1, 3])], 4, Attr.Float("soft_cap", 15));
        Assert.That(e.Message, Does.Contain("MLstmGatesLanes: input 'gates' has shape [6,4]").And.Contain("[B + P·L, 2·NH] = [5, 2·NH]"));
        e = LanesError(CustomOps.GatesLanes, [("gates", [5, 4]), ("decode_mask", [2, 2]), ("prompt_mask", [1, 3])], 4, Attr.Float("soft_cap", 15));
        Assert.That(e.Message, Does.Contain("MLstmGatesLanes: input 'decode_attention_mask' has shape [2,2]").And.Contain("[B, 1]"));

        e = LanesError(CustomOps.HeadNormGateLanes, [("decode_h", [2, 2, 1, 6]), ("prompt_h", [1, 2, 3, 6]), ("o", [4, 12]), ("weight", [12]), ("bias", [12])], 1,
            Attr.Float("eps", 1e-5));
        Assert.That(e.Message, Does.Contain("MultiHeadNormGateLanes: input 'o' has shape [4,12]").And.Contain("[5,12] = [B + P·L, NH·DV]"));

        e = LanesError(CustomOps.Lanes, Cell(5), 8, cellAttrs[1..]);
        Assert.That(e.Message, Does.Contain("MLstmLanes: attribute 'chunk_size'").And.Contain("is missing"));
        e = LanesError(CustomOps.GatesLanes, [("gates", [5, 4]), ("decode_mask", [2, 1]), ("prompt_mask", [1, 3])], 4);
        Assert.That(e.Message, Does.Contain("MLstmGatesLanes: attribute 'soft_cap'").And.Contain("is missing"));
    }

    [TestCase(CustomOps.Chunkwise, "chunk_size")]
    [TestCase(CustomOps.Chunkwise, "max_inference_chunksize")]
    [TestCase(CustomOps.Chunkwise, "eps")]
    [TestCase(CustomOps.Step, "eps")]
    public void MissingCellAttributeIsAnErrorNamingTheOpAndTheAttribute(string op, string attribute)
    {
        using var options = OptionsWithLibrary();
        using var session = OneNode(op, DataType.Float, options, without: attribute);
        var e = Assert.Throws<OnnxRuntimeException>(() => RunFloat(session, Inputs(1, 2, 1, 4, 6)))!;
        Assert.That(e.Message, Does.Contain($"{op}: attribute '{attribute}'").And.Contain("is missing"));
    }

    [TestCase(CustomOps.Gates, "soft_cap")]
    [TestCase(CustomOps.HeadNormGate, "eps")]
    public void MissingFusedOpAttributeIsAnErrorNamingTheOpAndTheAttribute(string op, string attribute)
    {
        using var options = OptionsWithLibrary();
        var g = new OnnxGraph("fused");
        string[] inputs = op == CustomOps.Gates ? ["gates", "attention_mask"] : ["h", "o", "weight", "bias"];
        foreach (var name in inputs) g.Input(name, name == "attention_mask" ? DataType.Int64 : DataType.Float, null);
        var outs = g.Node($"/{op}", op, inputs, op == CustomOps.Gates ? 2 : 1, CustomOps.Domain);
        for (int i = 0; i < outs.Length; i++) g.Output($"out_{i}", outs[i], DataType.Float, null);
        var model = new ModelProto { IrVersion = ExportOptions.IrVersion, Graph = g.Proto };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = ExportOptions.Opset });
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = CustomOps.Domain, Version = CustomOps.DomainVersion });
        using var session = new InferenceSession(model.ToByteArray(), options);
        // B = 1, S = 2, NH = 2, DV = 3
        var values = op == CustomOps.Gates
            ? new[] { OrtValue.CreateTensorValueFromMemory(new float[8], [2, 4]), OrtValue.CreateTensorValueFromMemory(new long[] { 1, 1 }, [1, 2]) }
            : [OrtValue.CreateTensorValueFromMemory(new float[12], [1, 2, 2, 3]), OrtValue.CreateTensorValueFromMemory(new float[12], [2, 6]),
               OrtValue.CreateTensorValueFromMemory(new float[6], [6]), OrtValue.CreateTensorValueFromMemory(new float[6], [6])];
        try
        {
            var e = Assert.Throws<OnnxRuntimeException>(() => session.Run(new RunOptions(), inputs, values, [.. outs.Select((_, i) => $"out_{i}")]).Dispose())!;
            Assert.That(e.Message, Does.Contain($"{op}: attribute '{attribute}'").And.Contain("is missing"));
        }
        finally
        {
            foreach (var v in values) v.Dispose();
        }
    }

    [Test]
    public void StepOpEqualsTheChunkwiseOpOnOneToken()
    {
        using var options = OptionsWithLibrary();
        using var chunkwise = OneNode("MLstmChunkwise", DataType.Float, options);
        using var step = OneNode("MLstmStep", DataType.Float, options);
        var inputs = Inputs(2, 3, 1, 8, 12);
        var a = RunFloat(chunkwise, inputs);
        var b = RunFloat(step, inputs);
        for (int i = 0; i < 4; i++) Assert.That(b[i], Is.EqualTo(a[i]), $"output {i}");
    }

    [TestCase(DataType.Float16)]
    [TestCase(DataType.Bfloat16)]
    public void HalfPrecisionInputsMatchFloat32OnTheSameValues(DataType type)
    {
        using var options = OptionsWithLibrary();
        using var f32 = OneNode("MLstmChunkwise", DataType.Float, options);
        using var half = OneNode("MLstmChunkwise", type, options);
        var inputs = Inputs(1, 2, 11, 8, 12);
        // round q, k, v to the half type, so both models see the same values
        foreach (var name in new[] { "q", "k", "v" })
        {
            var d = inputs[name].Data;
            for (int i = 0; i < d.Length; i++) d[i] = type == DataType.Float16 ? (float)(Float16)d[i] : (float)(BFloat16)d[i];
        }
        var expected = RunFloat(f32, inputs);
        var values = new List<OrtValue>();
        try
        {
            foreach (var (name, (data, shape)) in inputs)
            {
                values.Add(name is "q" or "k" or "v"
                    ? (type == DataType.Float16
                        ? OrtValue.CreateTensorValueFromMemory(data.Select(x => (Float16)x).ToArray(), shape)
                        : OrtValue.CreateTensorValueFromMemory(data.Select(x => (BFloat16)x).ToArray(), shape))
                    : OrtValue.CreateTensorValueFromMemory(data, shape));
            }
            using var outputs = half.Run(new RunOptions(), inputs.Keys.ToList(), values, ["h", "C_out", "n_out", "m_out"]);
            var h = type == DataType.Float16
                ? outputs[0].GetTensorDataAsSpan<Float16>().ToArray().Select(x => (float)x).ToArray()
                : outputs[0].GetTensorDataAsSpan<BFloat16>().ToArray().Select(x => (float)x).ToArray();
            // float32 math on identical values: the state is bit-identical, h differs by its own rounding to the type
            double hRound = type == DataType.Float16 ? 1.0 / 2048 : 1.0 / 256;
            for (int i = 0; i < h.Length; i++) Assert.That(h[i], Is.EqualTo(expected[0][i]).Within(hRound * Math.Abs(expected[0][i]) + 1e-7), $"h[{i}]");
            Assert.That(outputs[1].GetTensorDataAsSpan<float>().ToArray(), Is.EqualTo(expected[1]), "C");
            Assert.That(outputs[2].GetTensorDataAsSpan<float>().ToArray(), Is.EqualTo(expected[2]), "n");
            Assert.That(outputs[3].GetTensorDataAsSpan<float>().ToArray(), Is.EqualTo(expected[3]), "m");
        }
        finally
        {
            foreach (var v in values) v.Dispose();
        }
    }
}
