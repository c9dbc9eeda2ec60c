using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.GraphBuilder.Graph;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.GraphBuilder.Architecture;

/// <summary>
/// What the builder and the layer ops share: the graph, the config, the options, the model's element type, the
/// [B, S] shape and the padding mask, and the small emitters every part uses. Names: a node is named by its path
/// through the model (<c>/model/blocks.3/mlstm/qkvo_proj/Gemm</c>), a weight by <see cref="InitName"/> of that path
/// (<c>model.blocks.3.mlstm.qkvo_proj.weight</c>), a constant by its value (<c>/model/constants/FLOAT/15</c>).
/// </summary>
internal sealed class GraphContext
{
    public GraphContext(OnnxGraph graph, XLstmConfig config, ExportOptions options)
    {
        G = graph;
        C = config;
        O = options;
        T = options.Dtype switch { WeightDtype.Fp16 => DataType.Float16, WeightDtype.Bf16 => DataType.Bfloat16, _ => DataType.Float };
    }

    public OnnxGraph G { get; }
    public XLstmConfig C { get; }
    public ExportOptions O { get; }
    /// <summary>Weights and activations: float32, float16 or bfloat16. Gates, state, norm statistics and logits stay float32.</summary>
    public DataType T { get; }
    /// <summary>
    /// The rows the layer ops work on now: the plain graph has one lane; the mixed graph (<see cref="ExportOptions.MixedGraph"/>)
    /// has the decode lane [B, 1] and the prompt lane [P, L], whose rows the token-wise ops see as one [B + P·L, H] stream.
    /// </summary>
    public Lane Lane { get; set; } = new("", "", "batch");
    /// <summary>[B, S] int64, the current lane's embedded input's leading dims (set by the embedding).</summary>
    public string BatchAndSequence { get => Lane.BatchAndSequence; set => Lane.BatchAndSequence = value; }
    /// <summary>
    /// An int64 tensor whose shape [M/S, S] tells <c>Linear</c> a decode step (S = 1) from a prompt: input_ids (else
    /// attention_mask); in the mixed graph a [B + P·L, 1] tensor (every row through the decode kernels); null when there is none.
    /// </summary>
    public string? SequenceShape { get; set; }
    /// <summary>The current lane's mask input [B, S] int64, or null when exported without one.</summary>
    public string? MaskInput { get => Lane.MaskInput; set => Lane.MaskInput = value; }
    /// <summary>The current lane's mask as [B, 1, S] bool (true for real tokens; broadcasts over heads), or null.</summary>
    public string? Mask { get => Lane.Mask; set => Lane.Mask = value; }

    /// <summary>Initializer names follow the node path: /model/blocks.3/mlstm/qkvo_proj -> model.blocks.3.mlstm.qkvo_proj.weight.</summary>
    public static string InitName(string path, string what) => $"{path.TrimStart('/').Replace('/', '.')}.{what}";

    /// <summary>The weight <paramref name="what"/> ("weight", "bias") of the module at <paramref name="path"/>, stored in <paramref name="type"/> (default: T).</summary>
    /// A lane's segment is not part of the name: both lanes of the mixed graph read one initializer.
    public string Weight(string path, string what, IWeightSource source, DataType? type = null) =>
        G.Weight(InitName(Lane.Segment.Length == 0 ? path : path.Replace(Lane.Segment + "/", "/", StringComparison.Ordinal), what), source, type ?? T);

    /// <summary>y = x Wᵀ + b with W in the checkpoint's [out, in] layout, stored in <paramref name="type"/> (default: T).</summary>
    public string Gemm(string p, string x, IWeightSource weight, IWeightSource? bias, DataType? type = null, bool quantize = false)
    {
        if (quantize && O.QuantizeBits == 4) return MatMulNBits(p, x, weight, bias);
        string w = Weight(p, "weight", weight, type);
        if (O.Linear != LinearKernels.Onnx && SequenceShape is { } shape)
        {
            string[] operands = bias is null ? [x, w, shape] : [x, w, shape, Weight(p, "bias", bias, type)];
            return G.Node($"{p}/{CustomOps.Linear}", CustomOps.Linear, operands, 1, CustomOps.Domain,
                Attr.Int("batch_invariant", O.Linear == LinearKernels.BatchInvariant ? 1 : 0))[0];
        }
        string[] inputs = bias is null ? [x, w] : [x, w, Weight(p, "bias", bias, type)];
        return G.Op($"{p}/Gemm", "Gemm", inputs, Attr.Int("transB", 1));
    }

    /// <summary>y = x Wᵀ + b with W as 4-bit blocks (com.microsoft::MatMulNBits; W stays [N, K], as the checkpoint has it).</summary>
    private string MatMulNBits(string p, string x, IWeightSource weight, IWeightSource? bias)
    {
        var q = new Int4Quantizer(weight, O.QuantizeBlockSize, T);
        string b = G.RawWeight(InitName(p, "weight.q4"), DataType.Uint8, q.BShape, q.BBytes, q.B);
        string scales = G.RawWeight(InitName(p, "weight.scales"), T, q.ScalesShape, q.ScalesBytes, q.Scales);
        string zeros = G.RawWeight(InitName(p, "weight.zero_points"), DataType.Uint8, q.ZerosShape, q.ZerosBytes, q.ZeroPoints);
        string[] inputs = bias is null ? [x, b, scales, zeros] : [x, b, scales, zeros, "", Weight(p, "bias", bias)];
        return G.Node($"{p}/MatMulNBits", "MatMulNBits", inputs, 1, "com.microsoft",
            Attr.Int("K", q.K), Attr.Int("N", q.N), Attr.Int("bits", 4), Attr.Int("block_size", q.BlockSize))[0];
    }

    /// <summary>RMSNorm over the last axis with float32 statistics, eps inside the rsqrt; the bias added after.</summary>
    public string RmsNorm(string p, string x, IWeightSource weight, IWeightSource? bias)
    {
        string y = G.Op($"{p}/RMSNormalization", "RMSNormalization", [x, Weight(p, "weight", weight)],
            Attr.Int("axis", -1), Attr.Float("epsilon", C.NormEps), Attr.Int("stash_type", 1));
        return bias is null ? y : G.Op($"{p}/Add", "Add", [y, Weight(p, "bias", bias)]);
    }

    /// <summary>The residual stream with its pending update added (an Add named by the block that made the update).</summary>
    public string Sum(Residual r) => r.Update is null ? r.X : G.Op($"{r.AddPath}/Add", "Add", [r.X, r.Update]);

    /// <summary>The graph type of state part <paramref name="part"/>: bfloat16 for C and n with <c>--state-dtype bf16</c>, else float32.</summary>
    public DataType StateType(StatePart part) => StateLayout.IsBf16(part, O.StateDtype) ? DataType.Bfloat16 : DataType.Float;

    /// <summary>x as float32 (a Cast when the model is float16 or bfloat16).</summary>
    public string ToFloat(string p, string x) =>
        T == DataType.Float ? x : G.Op($"{p}/CastToFloat", "Cast", [x], Attr.Int("to", (long)DataType.Float));

    /// <summary>x in the model's type T (a Cast from float32 when T is float16 or bfloat16).</summary>
    public string ToModelType(string p, string x) =>
        T == DataType.Float ? x : G.Op($"{p}/Cast", "Cast", [x], Attr.Int("to", (long)T));

    /// <summary>cap · tanh(x / cap).</summary>
    public string SoftCap(string p, string x, double cap)
    {
        string c = G.Constant((float)cap);
        return G.Op($"{p}/Mul", "Mul", [G.Op($"{p}/Tanh", "Tanh", [G.Op($"{p}/Div", "Div", [x, c])]), c]);
    }

    /// <summary>[B·S, NH·D] -> [B, S, NH, D] -> [B, NH, S, D] (head h = columns [h·D, (h+1)·D)).</summary>
    public string Heads(string p, string x, long d)
    {
        string r = G.Op($"{p}/Reshape", "Reshape", [x, ShapeBS(C.NumHeads, d)]);
        return G.Op($"{p}/Transpose", "Transpose", [r], Attr.Ints("perm", 0, 2, 1, 3));
    }

    /// <summary>[B·S, NH] -> [B, S, NH] -> [B, NH, S].</summary>
    public string GateHeads(string p, string x)
    {
        string r = G.Op($"{p}/Reshape", "Reshape", [x, ShapeBS(C.NumHeads)]);
        return G.Op($"{p}/Transpose", "Transpose", [r], Attr.Ints("perm", 0, 2, 1));
    }

    /// <summary>The current lane's shape [B, S, tail...] as an int64 tensor, built once per lane and tail.</summary>
    public string ShapeBS(params long[] tail)
    {
        string key = string.Join(",", tail);
        if (!Lane.Shapes.TryGetValue(key, out var s))
        {
            s = G.Op($"/model{Lane.Segment}/shape_B_S_{string.Join("_", tail)}/Concat", "Concat", [BatchAndSequence, G.Constant(tail)], Attr.Int("axis", 0));
            Lane.Shapes[key] = s;
        }
        return s;
    }
}

/// <summary>
/// One batch of rows of one [B, S] shape and what belongs to it: the shape, the mask, the state inputs' name prefix. Its
/// <see cref="Segment"/> ("" in the plain graph; "/decode" or "/prompt" in the mixed graph) goes into the paths of its
/// nodes (<c>/model/blocks.3/mlstm/prompt/cell/Chunkwise</c>), never into weight names.
/// </summary>
internal sealed class Lane(string segment, string inputPrefix, string batchDim)
{
    public string Segment { get; } = segment;
    /// <summary>Prefix of the lane's graph inputs and state outputs: "" or <see cref="GraphNames.PromptPrefix"/>.</summary>
    public string InputPrefix { get; } = inputPrefix;
    /// <summary>The symbolic name of the lane's batch axis in the graph's inputs and outputs.</summary>
    public string BatchDim { get; } = batchDim;
    public string BatchAndSequence { get; set; } = "";
    public string? MaskInput { get; set; }
    public string? Mask { get; set; }
    public Dictionary<string, string> Shapes { get; } = [];
}
