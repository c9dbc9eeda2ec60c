using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Graph;

namespace XLstmOnnx.GraphBuilder.Architecture;

/// <summary>
/// The ONNX Runtime fast path (<c>--mlstm-kernels custom</c>): the cell and each element-wise chain as one kernel,
/// our ops of the <see cref="CustomOps.Domain"/> domain (customops/, libxlstm_customops.so) and ONNX Runtime's
/// <c>com.microsoft::SkipSimplifiedLayerNormalization</c>. The graph has no control flow, so a decode step can be
/// captured as a CUDA graph. Where a fused kernel does not apply (a norm with nothing to add, gates without a mask
/// input) the standard ops stand in.
/// </summary>
internal sealed class FusedLayerOps(GraphContext x) : ILayerOps
{
    private readonly StandardLayerOps _standard = new(x);
    private OnnxGraph G => x.G;

    /// <summary>
    /// x + update and RMSNorm in one kernel, which writes both the sum (in the model type, as HF's residual add) and
    /// the normed value. The norm may read the sum before that rounding (ONNX Runtime's non-strict mode): a
    /// rounding-sized difference in float16 and bfloat16 (docs/numerics.md, "Residual adds").
    /// </summary>
    public (string Sum, string Normed) AddNorm(string norm, Residual r, IWeightSource weight, IWeightSource? bias)
    {
        if (r.Update is null) return _standard.AddNorm(norm, r, weight, bias);
        // outputs: normed, mean, inv_std_var, input_skip_bias_sum
        var o = G.NodeWithOptionalOutputs($"{norm}/SkipSimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
            [r.Update, r.X, x.Weight(norm, "weight", weight)], [true, false, false, true], "com.microsoft",
            Attr.Float("epsilon", x.C.NormEps));
        string normed = bias is null ? o[0] : G.Op($"{norm}/Add", "Add", [o[0], x.Weight(norm, "bias", bias)]);
        return (o[3], normed);
    }

    /// <summary>Soft cap, padding mask and [B·S, 2NH] → 2 × [B, NH, S] in one kernel, which reads the mask input itself.</summary>
    public (string I, string F) Gates(string layer, string preactivations)
    {
        if (x.MaskInput is null) return _standard.Gates(layer, preactivations);
        var g = G.Node($"{layer}/if_gate/{CustomOps.Gates}", CustomOps.Gates, [preactivations, x.MaskInput], 2, CustomOps.Domain,
            Attr.Float("soft_cap", x.C.GateSoftCap ?? 0)); // 0: no cap
        return (g[0], g[1]);
    }

    /// <summary>
    /// One node for any S ≥ 1 on HF's schedule (the op follows it itself; S = 1 is the step), so one graph serves
    /// prompts and decode steps. q, k, v and h stay in the model type; gate math and state are float32 inside.
    /// </summary>
    public (string H, CellState State) Cell(string layer, string q, string k, string v, string i, string f, CellState past)
    {
        var schedule = x.C.Schedule;
        var o = G.Node($"{layer}/cell/{CustomOps.Chunkwise}", CustomOps.Chunkwise, [q, k, v, i, f, past.C, past.N, past.M], 4, CustomOps.Domain,
            Attr.Int("chunk_size", schedule.ChunkSize),
            Attr.Int("max_inference_chunksize", schedule.SegmentLength),
            Attr.Float("eps", x.C.Eps));
        return (o[0], new CellState(o[1], o[2], o[3]));
    }

    /// <summary>
    /// Two lanes, decode then prompt, as one <c>MLstmLanes</c> node under <c>{layer}/lanes/cell</c>: the decode lane's
    /// step and the prompt lane's cell on HF's schedule, which on CUDA run side by side on two streams (at batch 1
    /// the prompt's chunks fill half the SMs for their whole run; docs/serving.md, "Two cells at once"). Other lane
    /// counts: a node per lane.
    /// </summary>
    public (string H, CellState State)[] LaneCells(string layer, IReadOnlyList<LaneCell> lanes)
    {
        if (lanes.Count != 2) return [.. lanes.Select(c => Cell(c.Layer, c.Q, c.K, c.V, c.I, c.F, c.Past))];
        var schedule = x.C.Schedule;
        var inputs = lanes.SelectMany(c => new[] { c.Q, c.K, c.V, c.I, c.F, c.Past.C, c.Past.N, c.Past.M }).ToArray();
        var o = G.Node($"{layer}/lanes/cell/{CustomOps.Lanes}", CustomOps.Lanes, inputs, 8, CustomOps.Domain,
            Attr.Int("chunk_size", schedule.ChunkSize),
            Attr.Int("max_inference_chunksize", schedule.SegmentLength),
            Attr.Float("eps", x.C.Eps));
        return [(o[0], new CellState(o[1], o[2], o[3])), (o[4], new CellState(o[5], o[6], o[7]))];
    }

    /// <summary>σ(o) ⊙ (LayerNorm per head over DV · w + b), read from the cell's [B,NH,S,DV] and written as [B·S, NH·DV].</summary>
    public string HeadNormGate(string layer, string h, string o, IWeightSource weight, IWeightSource? bias)
    {
        string p = $"{layer}/multihead_norm";
        string b = bias is null ? G.Filled(0f, x.C.VDim, x.T) : x.Weight(p, "bias", bias); // the op always takes a bias
        return G.Node($"{p}/{CustomOps.HeadNormGate}", CustomOps.HeadNormGate, [h, o, x.Weight(p, "weight", weight), b], 1, CustomOps.Domain,
            Attr.Float("eps", x.C.NormEps))[0];
    }

    /// <summary>silu(gate) ⊙ z in one kernel.</summary>
    public string SwiGlu(string ffn, string upGateZ) =>
        G.Node($"{ffn}/{CustomOps.SwiGlu}", CustomOps.SwiGlu, [upGateZ], 1, CustomOps.Domain)[0];
}
