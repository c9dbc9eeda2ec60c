using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Graph;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.GraphBuilder.Architecture;

/// <summary>
/// The layer's element-wise parts and the cell from standard ONNX ops (opset 23): portable, no custom-op library.
/// The cell is a Loop on HF's schedule (<see cref="MLstmCellEmitter"/>) that computes in float32.
/// </summary>
internal sealed class StandardLayerOps(GraphContext x) : ILayerOps
{
    private readonly MLstmCellEmitter _cell = new(x.G, x.C, x.O.StateDtype == StateDtype.Bf16);
    private OnnxGraph G => x.G;

    /// <summary>Add (named by the block that made the update), then RMSNorm.</summary>
    public (string Sum, string Normed) AddNorm(string norm, Residual r, IWeightSource weight, IWeightSource? bias)
    {
        string sum = x.Sum(r);
        return (sum, x.RmsNorm(norm, sum, weight, bias));
    }

    /// <summary>
    /// [B·S, 2NH] ─► soft cap ─► Split ─► ĩ, f̃ ─► [B, NH, S] each ─► padding mask (Where)
    /// </summary>
    public (string I, string F) Gates(string layer, string preactivations)
    {
        string gates = preactivations;
        long nh = x.C.NumHeads;
        if (x.C.GateSoftCap is { } cap) gates = x.SoftCap($"{layer}/if_gate/soft_cap", gates, cap); // before the split, as HF does with concatenated (weight_mode "fused") gates
        var split = G.Node($"{layer}/if_gate/Split", "Split", [gates, G.Constant(nh, nh)], 2, "", Attr.Int("axis", 1));
        string i = x.GateHeads($"{layer}/igate_heads", split[0]);
        string f = x.GateHeads($"{layer}/fgate_heads", split[1]);
        if (x.Mask is { } mask)
        {
            // A padded position must leave the state exactly as it was: ĩ = −inf gives a zero input gate
            // (exp(−inf − m) = 0), f̃ = +inf a forget gate of one (logsigmoid(+inf) = 0), and m' = max(lf + m, ĩ) = m.
            i = G.Op($"{layer}/igate_heads/mask/Where", "Where", [mask, i, G.Constant(float.NegativeInfinity)]);
            f = G.Op($"{layer}/fgate_heads/mask/Where", "Where", [mask, f, G.Constant(float.PositiveInfinity)]);
        }
        return (i, f);
    }

    /// <summary>
    /// q, k, v ─► float32 ─► Loop on HF's schedule ─► h ─► model type; the state is float32 inside the Loop (a bfloat16
    /// C and n are cast to float32 on the way in, rounded after every piece inside the Loop and cast back on the way
    /// out, exactly, as the fused op does).
    /// </summary>
    public (string H, CellState State) Cell(string layer, string q, string k, string v, string i, string f, CellState past)
    {
        string p = $"{layer}/cell";
        string In(string part, string value, StatePart which) => x.StateType(which) == DataType.Float ? value
            : G.Op($"{p}/past_{part}/Cast", "Cast", [value], Attr.Int("to", (long)DataType.Float));
        string Out(string part, string value, StatePart which) => x.StateType(which) == DataType.Float ? value
            : G.Op($"{p}/present_{part}/Cast", "Cast", [value], Attr.Int("to", (long)x.StateType(which)));
        var f32 = new CellState(In("C", past.C, StatePart.C), In("n", past.N, StatePart.N), past.M);
        var (h, state) = _cell.Emit(p, x.ToFloat($"{p}/q", q), x.ToFloat($"{p}/k", k), x.ToFloat($"{p}/v", v), i, f, f32);
        return (x.ToModelType($"{p}/h", h), new CellState(Out("C", state.C, StatePart.C), Out("n", state.N, StatePart.N), state.M));
    }

    /// <summary>Not in the portable graph: the mixed graph is written with the custom ops only (<see cref="Export.ExportOptions.MixedGraph"/>).</summary>
    public (string Gated, CellState[] States) LaneCells(string layer, StreamQkvo qkvo, string preactivations, IReadOnlyList<LaneCell> lanes,
        IWeightSource normWeight, IWeightSource? normBias) =>
        throw new NotSupportedException($"{layer}: the mixed graph needs ExportOptions.MLstmKernels custom (its lanes are custom ops); found onnx.");

    /// <summary>
    /// h [B,NH,S,DV] ─► [B,S,NH,DV] ─► LayerNorm per head over DV ─► [B·S, NH·DV] ─► ·w (+b) ─► ⊙ σ(o)
    /// </summary>
    public string HeadNormGate(string layer, string h, string o, IWeightSource weight, IWeightSource? bias)
    {
        string p = $"{layer}/multihead_norm";
        h = G.Op($"{layer}/h/Transpose", "Transpose", [h], Attr.Ints("perm", 0, 2, 1, 3));
        // mean-centred, no affine inside (scale 1): HF applies the flat weight after casting back to the model type
        h = G.Op($"{p}/LayerNormalization", "LayerNormalization", [h, G.Filled(1f, x.C.VHeadDim, x.T)],
            Attr.Int("axis", -1), Attr.Float("epsilon", x.C.NormEps));
        h = G.Op($"{p}/Reshape", "Reshape", [h, G.Constant(-1, x.C.VDim)]);
        h = G.Op($"{p}/Mul", "Mul", [h, x.Weight(p, "weight", weight)]);
        if (bias is not null) h = G.Op($"{p}/Add", "Add", [h, x.Weight(p, "bias", bias)]);
        return G.Op($"{layer}/ogate/Mul", "Mul", [G.Op($"{layer}/ogate/Sigmoid", "Sigmoid", [o]), h]);
    }

    /// <summary>[B·S, 2F] ─► Split ─► gate, z ─► gate·σ(gate) ⊙ z</summary>
    public string SwiGlu(string ffn, string upGateZ)
    {
        long f = x.C.FfnDim;
        var gz = G.Node($"{ffn}/proj_up_gate_z/Split", "Split", [upGateZ, G.Constant(f, f)], 2, "", Attr.Int("axis", 1));
        string silu = G.Op($"{ffn}/silu/Mul", "Mul", [gz[0], G.Op($"{ffn}/silu/Sigmoid", "Sigmoid", [gz[0]])]);
        return G.Op($"{ffn}/gate/Mul", "Mul", [silu, gz[1]]);
    }
}
