using XLstmOnnx.GraphBuilder.Checkpoint;

namespace XLstmOnnx.GraphBuilder.Architecture;

/// <summary>
/// The residual stream x [B·S, H], and an update a block produced but did not add yet: the next norm adds it (one
/// fused node on the ONNX Runtime fast path), or <see cref="GraphContext.Sum"/> does, as <c>{AddPath}/Add</c>.
/// </summary>
internal readonly record struct Residual(string X, string? Update = null, string AddPath = "");

/// <summary>One layer's mLSTM state, float32: C [B,NH,DQK,DV], n [B,NH,DQK], m [B,NH,1].</summary>
internal readonly record struct CellState(string C, string N, string M);

/// <summary>One lane of the mixed graph at a layer's cell: its attention mask input and its past state.</summary>
internal sealed record LaneCell(string Mask, CellState Past);

/// <summary>The stream's projections split by kind: q, k [B + P·L, NH·DQK], v, o [B + P·L, NH·DV] (decode rows first).</summary>
internal sealed record StreamQkvo(string Q, string K, string V, string O);

/// <summary>
/// The one seam between the portable graph and the ONNX Runtime fast path (<c>--mlstm-kernels custom</c>): the mLSTM
/// cell and the chains of element-wise ops around the projections. <see cref="StandardLayerOps"/> emits standard
/// ONNX ops; <see cref="FusedLayerOps"/> emits one of our fused kernels (customops/) for each. Both compute the same
/// function (docs/exported-graph.md, "Two forms of one graph"); the projections are the builder's. Each method takes
/// the path of the module it belongs to and names its nodes below it.
/// </summary>
internal interface ILayerOps
{
    /// <summary>x' = x + the pending update (if any); RMSNorm(x')·w (+ b). Returns x' and the normed value, [B·S, H] each.</summary>
    (string Sum, string Normed) AddNorm(string norm, Residual x, IWeightSource weight, IWeightSource? bias);

    /// <summary>Gate pre-activations [B·S, 2NH] float32 → ĩ, f̃ [B, NH, S] float32: soft cap, padding mask, head layout.</summary>
    (string I, string F) Gates(string layer, string preactivations);

    /// <summary>
    /// The cell on HF's schedule: q, k [B,NH,S,DQK], v [B,NH,S,DV] in the model's type, ĩ, f̃ and the past state in;
    /// h [B,NH,S,DV] in the model's type and the new state out.
    /// </summary>
    (string H, CellState State) Cell(string layer, string q, string k, string v, string i, string f, CellState past);

    /// <summary>
    /// The mixed graph's cell part of a layer over its two lanes (decode, then prompt), from the stream's projections
    /// and gate pre-activations [B + P·L, 2NH]: each lane's gates and cell (the step on the decode rows, HF's schedule
    /// on the prompt rows), then σ(o) ⊙ (MultiHeadLayerNorm(h)·w + b) for the whole stream, [B + P·L, NH·DV], and each
    /// lane's new state. <paramref name="layer"/> is the layer's path.
    /// </summary>
    (string Gated, CellState[] States) LaneCells(string layer, StreamQkvo qkvo, string preactivations, IReadOnlyList<LaneCell> lanes,
        IWeightSource normWeight, IWeightSource? normBias);

    /// <summary>σ(o) ⊙ (MultiHeadLayerNorm(h)·w + b): h [B,NH,S,DV], o [B·S, NH·DV] → [B·S, NH·DV].</summary>
    string HeadNormGate(string layer, string h, string o, IWeightSource weight, IWeightSource? bias);

    /// <summary>silu(gate) ⊙ z of the FFN's up projection [B·S, 2F] (gate columns, then z) → [B·S, F].</summary>
    string SwiGlu(string ffn, string upGateZ);
}
