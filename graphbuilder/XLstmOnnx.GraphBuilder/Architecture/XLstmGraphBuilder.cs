using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.GraphBuilder.Graph;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.GraphBuilder.Architecture;

/// <summary>
/// Turns a config and bound weights into the whole <c>xLSTMForCausalLM</c> graph
/// (docs/hf-semantics.md, "The forward pass"; docs/exported-graph.md for its inputs, outputs and state):
/// <code>
///   input_ids ─► embeddings ─► block 0 … block N−1 ─► out_norm ─► lm_head ─► soft cap ─► logits
///   past_state.i.{C,n,m} ─► block i ─► present_state.i.{C,n,m}
/// </code>
/// The residual stream is kept as [B·S, H] so that every projection is one Gemm with transB (weights stay in the
/// checkpoint's [out, in] layout and stream straight into the file); only the cell sees [B, NH, S, D]. The block and
/// layer methods read like the forward pass (tests/XLstmOnnx.Tests/ReferenceXLstm.cs computes the same, token by
/// token); how the norms, gates, cell and gated outputs are emitted is the <see cref="ILayerOps"/>'s choice.
/// </summary>
public sealed class XLstmGraphBuilder
{
    private readonly GraphContext _x;
    private readonly XLstmConfig _c;
    private readonly BoundWeights _w;
    private readonly ExportOptions _o;
    private readonly ILayerOps _ops;
    private readonly StateLayout _state;
    /// <summary>The mixed graph's lanes, decode then prompt; null in the plain graph.</summary>
    private readonly Lane[]? _lanes;
    /// <summary>The stream-wide lane of the mixed graph (norms, projections, FFN: no lane segment in their paths).</summary>
    private readonly Lane _stream;
    /// <summary>The mixed graph's rows per lane, [B, P·L] int64, for splitting the stream.</summary>
    private string _laneRows = "";

    private XLstmGraphBuilder(XLstmConfig config, BoundWeights weights, ExportOptions options, bool mixed)
    {
        _x = new GraphContext(new OnnxGraph("xlstm"), config, options);
        _c = config;
        _w = weights;
        _o = options;
        _state = new StateLayout(checked((int)config.NumBlocks), config.NumHeads, config.QkHeadDim, config.VHeadDim);
        // --mlstm-kernels custom: the ONNX Runtime fast path, our fused kernels; otherwise standard ops only
        _ops = options.MLstmKernels == MLstmKernels.Custom ? new FusedLayerOps(_x) : new StandardLayerOps(_x);
        _stream = _x.Lane;
        if (mixed) _lanes = [new Lane("/decode", "", "batch"), new Lane("/prompt", GraphNames.PromptPrefix, "prompt_batch")];
    }

    private OnnxGraph G => _x.G;

    /// <summary>Builds the graph; initializers still reference the checkpoint until the exporter streams them.</summary>
    public static OnnxGraph Build(XLstmConfig config, BoundWeights weights, ExportOptions options)
    {
        var b = new XLstmGraphBuilder(config, weights, options, mixed: false);
        b.BuildGraph();
        return b._x.G;
    }

    /// <summary>
    /// Builds the mixed graph (<see cref="ExportOptions.MixedGraph"/>; docs/exported-graph.md, "The mixed graph"): a
    /// decode lane input_ids [B, 1] and a prompt lane prompt_input_ids [P, L], each with its mask and state, stacked into
    /// one [B + P·L, H] stream for the embedding, norms, projections and FFN, split for the cell, and the last position of
    /// each row out: logits [B + P, 1, V]. Its weights have the plain graph's names.
    /// </summary>
    public static OnnxGraph BuildMixed(XLstmConfig config, BoundWeights weights, ExportOptions options)
    {
        var b = new XLstmGraphBuilder(config, weights, options, mixed: true);
        b.BuildGraph();
        return b._x.G;
    }

    private void BuildGraph()
    {
        var residual = new Residual(_lanes is null ? MakeEmbedding() : MakeMixedEmbedding()); // [B·S, H]; mixed: [B + P·L, H]
        // transformers' hidden states: the embedding output (the first block's input), the outputs of blocks 0..N-2,
        // then the normed output in place of the last block's (docs/hf-semantics.md, "Hidden states")
        var hidden = new List<string>();
        if (_c.NumBlocks > 0) hidden.Add(residual.X);
        for (int i = 0; i < _c.NumBlocks; i++) residual = MakeBlock(i, residual, hidden);
        string x = _x.Sum(residual);                                      // the last block's FFN residual add
        bool last = _o.LastLogitsOnly || _lanes is not null;
        if (_lanes is not null) x = MakeLastPositions(x);                // [B + P, H]
        else if (last) x = MakeLastPosition(x);                          // [B, H]
        x = _x.RmsNorm("/model/out_norm", x, _w[WeightRole.OutNorm], null);
        hidden.Add(x);
        string logits = _x.ToFloat("/model/lm_head", _x.Gemm("/model/lm_head", x, _w[WeightRole.LmHead], null, quantize: true)); // [B·S, V], matmul in T, then fp32 (as HF)
        if (_c.OutputLogitSoftCap is { } cap) logits = _x.SoftCap("/model/logits_soft_cap", logits, cap);
        // [B·S, V] -> [B, S, V]   (last-only: [B, V] -> [B, 1, V])
        logits = last
            ? G.Op("/model/logits/Unsqueeze", "Unsqueeze", [logits, G.Constant(1)])
            : G.Op("/model/logits/Reshape", "Reshape", [logits, _x.ShapeBS(_c.VocabSize)]);
        string rows = _lanes is null ? "batch" : "rows"; // mixed: B + P
        G.Output(GraphNames.Logits, logits, DataType.Float, rows, last ? 1L : "sequence", _c.VocabSize);
        if (_o.NextToken)
        {
            // [B,1,V] -> [B,1]: greedy decoding reads B ids instead of B·V logits (ties: the first index, as ONNX specifies)
            string argMax = G.Op("/model/next_token/ArgMax", "ArgMax", [logits], Attr.Int("axis", 2), Attr.Int("keepdims", 0));
            string next = G.Op("/model/next_token/Where", "Where", [NonFiniteRows("/model/next_token", logits, 2), G.Constant(GraphNames.NonFiniteToken), argMax]);
            G.Output(GraphNames.NextToken, next, DataType.Int64, rows, 1L);
        }
        if (_o.HiddenStates) MakeHiddenStates(hidden);
    }

    /// <summary>
    /// bool, <paramref name="x"/>'s shape without <paramref name="axis"/>: true where a row of <paramref name="x"/> holds a NaN
    /// or an infinity. Σ 0·x is 0 for finite rows and NaN otherwise (0·±Inf is NaN), with no overflow: one multiply and
    /// one reduction over the logits, next to the V×H lm_head matmul that made them.
    /// <code>
    /// x ─► Mul(·, 0) ─► ReduceSum(axis) ─► IsNaN
    /// </code>
    /// </summary>
    internal static string NonFiniteRows(OnnxGraph g, string prefix, string x, long axis)
    {
        string zeroed = g.Op($"{prefix}/finite/Mul", "Mul", [x, g.Constant(0f)]);
        string sum = g.Op($"{prefix}/finite/ReduceSum", "ReduceSum", [zeroed, g.Constant(axis)], Attr.Int("keepdims", 0));
        return g.Op($"{prefix}/finite/IsNaN", "IsNaN", [sum]);
    }

    private string NonFiniteRows(string prefix, string x, long axis) => NonFiniteRows(G, prefix, x, axis);

    /// <summary>
    /// transformers' order: the embedding output, the outputs of blocks 0..N-2, then the final normed output, as float32
    /// [B, S, H] (last-only: the last is [B, 1, H]).
    /// </summary>
    private void MakeHiddenStates(List<string> hidden)
    {
        for (int i = 0; i < hidden.Count; i++)
        {
            bool last = i == hidden.Count - 1 && _o.LastLogitsOnly;
            string hs = _x.ToFloat($"/model/hidden_states.{i}", hidden[i]);
            string h = last ? G.Op($"/model/hidden_states.{i}/Unsqueeze", "Unsqueeze", [hs, G.Constant(1)])
                : G.Op($"/model/hidden_states.{i}/Reshape", "Reshape", [hs, _x.ShapeBS(_c.HiddenSize)]);
            G.Output(GraphNames.Hidden(i), h, DataType.Float, "batch", last ? 1L : "sequence", _c.HiddenSize);
        }
    }

    /// <summary>input_ids [B,S] ─► Gather ─► [B,S,E] ─► [B·S, H]; or inputs_embeds [B,S,E] ─► [B·S, H]. Also the mask.</summary>
    private string MakeEmbedding()
    {
        string x;
        if (_o.InputsEmbeds)
        {
            x = G.Input(GraphNames.InputsEmbeds, DataType.Float, "batch", "sequence", _c.EmbeddingDim);
            x = _x.ToModelType("/model/inputs_embeds", x);
        }
        else
        {
            string ids = _x.SequenceShape = G.Input(GraphNames.InputIds, DataType.Int64, "batch", "sequence");
            x = G.Op("/model/embeddings/Gather", "Gather", [_x.Weight("/model/embeddings", "weight", _w[WeightRole.Embedding]), ids]);
        }
        _x.BatchAndSequence = G.Op("/model/batch_and_sequence/Shape", "Shape", [x], Attr.Int("start", 0), Attr.Int("end", 2)); // [B, S]
        if (_o.AttentionMask)
        {
            string mask = _x.MaskInput = G.Input(GraphNames.AttentionMask, DataType.Int64, "batch", "sequence");
            _x.SequenceShape ??= mask;
            string b = G.Op("/model/attention_mask/Cast", "Cast", [mask], Attr.Int("to", (long)DataType.Bool));
            _x.Mask = G.Op("/model/attention_mask/Unsqueeze", "Unsqueeze", [b, G.Constant(1)]); // [B,S] -> [B,1,S], broadcasts over heads
        }
        return G.Op("/model/embeddings/Reshape", "Reshape", [x, G.Constant(-1, _c.HiddenSize)]);
    }

    /// <summary>
    /// The mixed graph's two lanes, embedded and stacked (decode rows first), each with its mask:
    /// <code>
    ///   input_ids [B, 1]        ─► Gather ─► [B, H]   ─┐
    ///   prompt_input_ids [P, L] ─► Gather ─► [P·L, H] ─┴► Concat ─► [B + P·L, H]
    /// </code>
    /// Sets the rows per lane, and a [B + P·L, 1] tensor for <c>Linear</c>'s shape input (every row runs the decode
    /// kernels, so in batch-invariant mode a decode row's result does not depend on the prompt beside it).
    /// </summary>
    private string MakeMixedEmbedding()
    {
        string table = _x.Weight("/model/embeddings", "weight", _w[WeightRole.Embedding]);
        var rows = new List<string>();
        var counts = new List<string>();
        foreach (var lane in _lanes!)
        {
            _x.Lane = lane;
            object sequence = lane.InputPrefix.Length == 0 ? 1L : "prompt_sequence";
            string ids = G.Input(lane.InputPrefix + GraphNames.InputIds, DataType.Int64, lane.BatchDim, sequence);
            string e = G.Op($"/model/embeddings{lane.Segment}/Gather", "Gather", [table, ids]);                          // [B, S, E]
            _x.BatchAndSequence = G.Op($"/model{lane.Segment}/batch_and_sequence/Shape", "Shape", [e], Attr.Int("start", 0), Attr.Int("end", 2));
            string mask = _x.MaskInput = G.Input(lane.InputPrefix + GraphNames.AttentionMask, DataType.Int64, lane.BatchDim, sequence);
            string b = G.Op($"/model{lane.Segment}/attention_mask/Cast", "Cast", [mask], Attr.Int("to", (long)DataType.Bool));
            _x.Mask = G.Op($"/model{lane.Segment}/attention_mask/Unsqueeze", "Unsqueeze", [b, G.Constant(1)]);        // [B,1,S]
            rows.Add(G.Op($"/model/embeddings{lane.Segment}/Reshape", "Reshape", [e, G.Constant(-1, _c.HiddenSize)])); // [B·S, H]
            counts.Add(G.Op($"/model{lane.Segment}/rows/ReduceProd", "ReduceProd", [_x.BatchAndSequence], Attr.Int("keepdims", 1))); // [1]
        }
        _x.Lane = _stream;
        _laneRows = G.Op("/model/lanes/rows/Concat", "Concat", [.. counts], Attr.Int("axis", 0));                       // [2]
        string x = G.Op("/model/embeddings/Concat", "Concat", [.. rows], Attr.Int("axis", 0));                          // [B + P·L, H]
        string m = G.Op("/model/lanes/stream_rows/Shape", "Shape", [x], Attr.Int("start", 0), Attr.Int("end", 1));     // [1]
        string shape = G.Op("/model/lanes/linear_shape/Concat", "Concat", [m, G.Constant(1L)], Attr.Int("axis", 0));    // [B + P·L, 1]
        _x.SequenceShape = G.Op("/model/lanes/linear_shape/ConstantOfShape", "ConstantOfShape", [shape], Attr.Int64Tensor("value", 0));
        return x;
    }

    /// <summary>The stream [B + P·L, …] cut into its lanes' rows: [B, …] and [P·L, …].</summary>
    private string[] SplitLanes(string p, string x) => G.Node($"{p}/lanes/Split", "Split", [x, _laneRows], 2, "", Attr.Int("axis", 0));

    /// <summary>The mixed graph's last positions: the decode rows as they are, each prompt row's last token: [B + P, H].</summary>
    private string MakeLastPositions(string x)
    {
        var lanes = SplitLanes("/model/last_position", x);
        _x.Lane = _lanes![1];
        string prompt = MakeLastPosition(lanes[1]);                                                                     // [P, H]
        _x.Lane = _stream;
        return G.Op("/model/last_position/Concat", "Concat", [lanes[0], prompt], Attr.Int("axis", 0));
    }

    /// <summary>
    /// x ─► norm_mlstm ─► mLSTM layer ─► (+x) ─► norm_ffn ─► FFN ─► (+)
    /// Each residual add is left pending in the returned <see cref="Residual"/> and added by the norm after it (one
    /// node on the fast path); the add keeps this block's name. <paramref name="hidden"/> receives the previous
    /// block's output once this block has summed it.
    /// </summary>
    private Residual MakeBlock(int i, Residual input, List<string> hidden)
    {
        string p = $"/model/blocks.{i}";
        var (x, h) = _ops.AddNorm($"{p}/norm_mlstm", input, _w[WeightRole.NormMlstm, i], _w.Optional(WeightRole.NormMlstmBias, i));
        if (input.Update is not null) hidden.Add(x);
        var mlstm = new Residual(x, MakeMLstmLayer(i, h), $"{p}/mlstm_residual");
        (x, h) = _ops.AddNorm($"{p}/norm_ffn", mlstm, _w[WeightRole.NormFfn, i], _w.Optional(WeightRole.NormFfnBias, i));
        return new Residual(x, MakeFeedForward(i, h), $"{p}/ffn_residual");
    }

    /// <summary>
    /// q, k, v, o = split(x W_qkvoᵀ); ĩ, f̃ = cap(x W_ifᵀ + b); h, state = mLSTM(q, k, v, ĩ, f̃; past state);
    /// y = out_proj(σ(o) ⊙ MultiHeadLayerNorm(h)).
    /// </summary>
    private string MakeMLstmLayer(int i, string x)
    {
        string p = $"/model/blocks.{i}/mlstm";
        string proj = _x.Gemm($"{p}/qkvo_proj", x, _w[WeightRole.QkvoProj, i], _w.Optional(WeightRole.QkvoProjBias, i), quantize: true);
        // gate pre-activations in float32, from a float32 copy of x (the i/f weights, 2·NH rows, are stored float32)
        string preact = _x.Gemm($"{p}/if_gate", _x.ToFloat($"{p}/if_gate/input", x), _w[WeightRole.IfGate, i], _w[WeightRole.IfGateBias, i], DataType.Float);
        string gated = _lanes is null ? MakeCell(i, p, proj, preact) : MakeLaneCells(i, p, proj, preact);
        return _x.Gemm($"{p}/out_proj", gated, _w[WeightRole.OutProj, i], _w.Optional(WeightRole.OutProjBias, i), quantize: true); // [B·S, H]
    }

    /// <summary>
    /// The cell of layer <paramref name="i"/> from the projections: q, k, v, o = split(proj); ĩ, f̃ = gates(preact);
    /// h, state = mLSTM(q, k, v, ĩ, f̃; past state); σ(o) ⊙ MultiHeadLayerNorm(h), [B·S, NH·DV].
    /// </summary>
    private string MakeCell(int i, string p, string proj, string preact)
    {
        var qkvo = SplitQkvo(p, proj);
        string q = _x.Heads($"{p}/q_heads", qkvo[0], _c.QkHeadDim);                                        // [B,NH,S,DQK]
        string k = _x.Heads($"{p}/k_heads", qkvo[1], _c.QkHeadDim);
        string v = _x.Heads($"{p}/v_heads", qkvo[2], _c.VHeadDim);                                         // [B,NH,S,DV]
        string o = qkvo[3];                                                                                 // [B·S, NH·DV]
        var (ig, fg) = _ops.Gates(p, preact);                                                               // [B,NH,S] each
        var (h, state) = _ops.Cell(p, q, k, v, ig, fg, PastState(i));                                       // [B,NH,S,DV]
        PresentState(i, state);
        return _ops.HeadNormGate(p, h, o, _w[WeightRole.MultiheadNorm, i], _w.Optional(WeightRole.MultiheadNormBias, i));
    }

    /// <summary>q, k [rows, NH·DQK], v, o [rows, NH·DV] = split(proj) along the features.</summary>
    private string[] SplitQkvo(string p, string proj) =>
        G.Node($"{p}/qkvo_proj/Split", "Split", [proj, G.Constant(_c.QkDim, _c.QkDim, _c.VDim, _c.VDim)], 4, "", Attr.Int("axis", 1));

    /// <summary>
    /// The mixed graph's cell of layer <paramref name="i"/>: the stream's projections split by kind (not by lane), each
    /// lane's mask and past state, and the lanes' gates, cells and gated output as the layer ops write them (on the fast
    /// path three nodes that read and write the stream's rows): [B + P·L, NH·DV].
    /// </summary>
    private string MakeLaneCells(int i, string p, string proj, string preact)
    {
        var qkvo = SplitQkvo(p, proj);                                                                    // [B + P·L, ·]
        var lanes = new LaneCell[_lanes!.Length];
        for (int l = 0; l < _lanes.Length; l++)
        {
            _x.Lane = _lanes[l];
            lanes[l] = new LaneCell(_x.MaskInput!, PastState(i));
        }
        _x.Lane = _stream;
        var (gated, states) = _ops.LaneCells(p, new StreamQkvo(qkvo[0], qkvo[1], qkvo[2], qkvo[3]), preact, lanes,
            _w[WeightRole.MultiheadNorm, i], _w.Optional(WeightRole.MultiheadNormBias, i));
        for (int l = 0; l < _lanes.Length; l++)
        {
            _x.Lane = _lanes[l];
            PresentState(i, states[l]);
        }
        _x.Lane = _stream;
        return gated;                                                                                   // [B + P·L, NH·DV]
    }

    /// <summary>gate, z = split(x W_upᵀ); y = (silu(gate) ⊙ z) W_downᵀ.</summary>
    private string MakeFeedForward(int i, string x)
    {
        string p = $"/model/blocks.{i}/ffn";
        string up = _x.Gemm($"{p}/proj_up_gate_z", x, _w[WeightRole.FfnUpGateZ, i], _w.Optional(WeightRole.FfnUpGateZBias, i), quantize: true); // [B·S, 2F]
        return _x.Gemm($"{p}/proj_down", _ops.SwiGlu(p, up), _w[WeightRole.FfnDown, i], _w.Optional(WeightRole.FfnDownBias, i), quantize: true);
    }

    /// <summary>
    /// Layer <paramref name="i"/>'s state inputs of the current lane: past_state.i.{C,n,m} (the prompt lane's:
    /// prompt_past_state.i.*); C and n in the state dtype, m float32.
    /// </summary>
    private CellState PastState(int i) => new(
        G.Input(_x.Lane.InputPrefix + StateLayout.PastName(i, StatePart.C), _x.StateType(StatePart.C), StateDims(StatePart.C)),
        G.Input(_x.Lane.InputPrefix + StateLayout.PastName(i, StatePart.N), _x.StateType(StatePart.N), StateDims(StatePart.N)),
        G.Input(_x.Lane.InputPrefix + StateLayout.PastName(i, StatePart.M), _x.StateType(StatePart.M), StateDims(StatePart.M)));

    /// <summary>Layer <paramref name="i"/>'s state outputs of the current lane: present_state.i.{C,n,m} (or prompt_present_state.i.*).</summary>
    private void PresentState(int i, CellState s)
    {
        G.Output(_x.Lane.InputPrefix + StateLayout.PresentName(i, StatePart.C), s.C, _x.StateType(StatePart.C), StateDims(StatePart.C));
        G.Output(_x.Lane.InputPrefix + StateLayout.PresentName(i, StatePart.N), s.N, _x.StateType(StatePart.N), StateDims(StatePart.N));
        G.Output(_x.Lane.InputPrefix + StateLayout.PresentName(i, StatePart.M), s.M, _x.StateType(StatePart.M), StateDims(StatePart.M));
    }

    /// <summary>The dims of a state part: C [batch, NH, DQK, DV], n [batch, NH, DQK], m [batch, NH, 1] (<see cref="StateLayout"/>).</summary>
    private object[] StateDims(StatePart part) => [_x.Lane.BatchDim, .. _state.RowShape(part).Cast<object>()];

    /// <summary>[B·S, H] -> [B, S, H] -> last position [B, H] (of the current lane).</summary>
    private string MakeLastPosition(string x)
    {
        string p = $"/model{_x.Lane.Segment}/last_position";
        string r = G.Op($"{p}/Reshape", "Reshape", [x, _x.ShapeBS(_c.HiddenSize)]);
        string s = G.Op($"{p}/Slice", "Slice", [r, G.Constant(-1), G.Constant(long.MaxValue), G.Constant(1)]); // [B,1,H]
        return G.Op($"{p}/Squeeze", "Squeeze", [s, G.Constant(1)]);
    }
}
