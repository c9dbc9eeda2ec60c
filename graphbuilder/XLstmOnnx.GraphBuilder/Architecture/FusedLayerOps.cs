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
    /// The two lanes in three nodes under <c>{layer}/lanes/</c>, each reading and writing the stream's rows, so no node
    /// splits the stream by lane, transposes a lane to heads or joins the lanes again:
    /// <code>
    ///   preact [B + P·L, 2NH] ─► MLstmGatesLanes ─► ĩ, f̃ of each lane
    ///   q, k, v [B + P·L, ·] ─► MLstmLanes ─► h [B,NH,1,DV], h [P,NH,L,DV], each lane's state
    ///   h, h, o [B + P·L, NH·DV] ─► MultiHeadNormGateLanes ─► [B + P·L, NH·DV]
    /// </code>
    /// On CUDA the prompt lane's cell runs beside the decode step on a second stream (docs/serving.md, "Two cells at
    /// once"). The norm's weights keep the plain graph's names.
    /// </summary>
    public (string Gated, CellState[] States) LaneCells(string layer, StreamQkvo qkvo, string preactivations, IReadOnlyList<LaneCell> lanes,
        IWeightSource normWeight, IWeightSource? normBias)
    {
        if (lanes.Count != 2) throw new ArgumentException($"{layer}: the mixed graph has two lanes (decode, prompt); found {lanes.Count}.", nameof(lanes));
        var (d, p) = (lanes[0], lanes[1]);
        var g = G.Node($"{layer}/lanes/if_gate/{CustomOps.GatesLanes}", CustomOps.GatesLanes, [preactivations, d.Mask, p.Mask], 4, CustomOps.Domain,
            Attr.Float("soft_cap", x.C.GateSoftCap ?? 0)); // 0: no cap
        var schedule = x.C.Schedule;
        var c = G.Node($"{layer}/lanes/cell/{CustomOps.Lanes}", CustomOps.Lanes,
            [qkvo.Q, qkvo.K, qkvo.V, g[0], g[1], d.Past.C, d.Past.N, d.Past.M, g[2], g[3], p.Past.C, p.Past.N, p.Past.M], 8, CustomOps.Domain,
            Attr.Int("chunk_size", schedule.ChunkSize),
            Attr.Int("max_inference_chunksize", schedule.SegmentLength),
            Attr.Float("eps", x.C.Eps));
        var (w, b) = NormWeights(layer, normWeight, normBias);
        string y = G.Node($"{layer}/lanes/multihead_norm/{CustomOps.HeadNormGateLanes}", CustomOps.HeadNormGateLanes,
            [c[0], c[4], qkvo.O, w, b], 1, CustomOps.Domain, Attr.Float("eps", x.C.NormEps))[0];
        return (y, [new CellState(c[1], c[2], c[3]), new CellState(c[5], c[6], c[7])]);
    }

    /// <summary>σ(o) ⊙ (LayerNorm per head over DV · w + b), read from the cell's [B,NH,S,DV] and written as [B·S, NH·DV].</summary>
    public string HeadNormGate(string layer, string h, string o, IWeightSource weight, IWeightSource? bias)
    {
        var (w, b) = NormWeights(layer, weight, bias);
        return G.Node($"{layer}/multihead_norm/{CustomOps.HeadNormGate}", CustomOps.HeadNormGate, [h, o, w, b], 1, CustomOps.Domain,
            Attr.Float("eps", x.C.NormEps))[0];
    }

    /// <summary>The multi-head norm's weight and bias under <c>{layer}/multihead_norm</c> (zeros without a bias: the ops always take one).</summary>
    private (string Weight, string Bias) NormWeights(string layer, IWeightSource weight, IWeightSource? bias)
    {
        string p = $"{layer}/multihead_norm";
        string b = bias is null ? G.Filled(0f, x.C.VDim, x.T) : x.Weight(p, "bias", bias); // first: the graph keeps its initializers' order
        return (x.Weight(p, "weight", weight), b);
    }

    /// <summary>silu(gate) ⊙ z in one kernel.</summary>
    public string SwiGlu(string ffn, string upGateZ) =>
        G.Node($"{ffn}/{CustomOps.SwiGlu}", CustomOps.SwiGlu, [upGateZ], 1, CustomOps.Domain)[0];
}
