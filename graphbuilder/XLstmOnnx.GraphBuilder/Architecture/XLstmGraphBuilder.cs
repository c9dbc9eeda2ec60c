using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.GraphBuilder.Graph;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.GraphBuilder.Architecture;

/// <summary>
/// Turns a config and bound weights into the whole <c>xLSTMForCausalLM</c> graph (reference §3):
/// <code>
///   input_ids ─► embeddings ─► block 0 … block N−1 ─► out_norm ─► lm_head ─► soft cap ─► logits
///   past_state.i.{C,n,m} ─► block i ─► present_state.i.{C,n,m}
/// </code>
/// The residual stream is kept as [B·S, H] so that every projection is one Gemm with transB (weights stay in the
/// checkpoint's [out, in] layout and stream straight into the file); only the cell sees [B, NH, S, D].
/// </summary>
public sealed class XLstmGraphBuilder
{
    private readonly XLstmConfig _c;
    private readonly BoundWeights _w;
    private readonly ExportOptions _o;
    private readonly OnnxGraph _g = new("xlstm");
    private readonly MLstmCellEmit _cell;
    private readonly Dictionary<string, string> _shapes = [];
    private string _bs = "";
    private string? _mask; // [B,1,S] bool, true for real tokens; null when exported without attention_mask
    private string? _maskInput; // the attention_mask input [B,S] int64
    private bool Fused => _o.MLstmKernels == MLstmKernels.Custom; // the ONNX Runtime fast path: fused ops around the cell
    private readonly DataType _t;  // weights and activations: float32, float16 or bfloat16; gates and state stay float32

    private XLstmGraphBuilder(XLstmConfig config, BoundWeights weights, ExportOptions options)
    {
        _c = config;
        _w = weights;
        _o = options;
        _t = options.Dtype switch { "fp16" => DataType.Float16, "bf16" => DataType.Bfloat16, _ => DataType.Float };
        // the cell: standard ops (portable) or our custom op (customops/), by --mlstm-kernels
        _cell = options.MLstmKernels == MLstmKernels.Custom ? new MLstmCustomOpEmitter(_g, config).Emit : new MLstmCellEmitter(_g, config).Emit;
    }

    /// <summary>Builds the graph; initializers still reference the checkpoint until the exporter streams them.</summary>
    public static OnnxGraph Build(XLstmConfig config, BoundWeights weights, ExportOptions options)
    {
        var b = new XLstmGraphBuilder(config, weights, options);
        b.BuildGraph();
        return b._g;
    }

    private void BuildGraph()
    {
        string x = MakeEmbedding();                                     // [B·S, H]
        var hidden = new List<string>();
        string? update = null; // the last block's FFN output, not yet added to the residual stream x
        for (int i = 0; i < _c.NumBlocks; i++)
        {
            (x, update) = MakeBlock(i, x, update, out string? blockInput);
            if (blockInput is not null) hidden.Add(blockInput);         // block i−1's output, summed by block i's first norm
        }
        if (update is not null) x = _g.Op($"/model/blocks.{_c.NumBlocks - 1}/ffn_residual/Add", "Add", [x, update]);
        if (_c.NumBlocks > 0) hidden.Add(x);
        if (_o.LastLogitsOnly) x = MakeLastPosition(x);                 // [B, H]
        x = MakeRmsNorm("/model/out_norm", x, _w[WeightRole.OutNorm], null);
        hidden.Add(x);
        string logits = ToFloat("/model/lm_head", Gemm("/model/lm_head", x, _w[WeightRole.LmHead], null, quantize: true)); // [B·S, V], matmul in T, then fp32 (as HF)
        if (_c.OutputLogitSoftCap is { } cap) logits = SoftCap("/model/logits_soft_cap", logits, cap);
        // [B·S, V] -> [B, S, V]   (last-only: [B, V] -> [B, 1, V])
        logits = _o.LastLogitsOnly
            ? _g.Op("/model/logits/Unsqueeze", "Unsqueeze", [logits, _g.Constant(1)])
            : _g.Op("/model/logits/Reshape", "Reshape", [logits, ShapeBS(_c.VocabSize)]);
        _g.Output(StateNames.Logits, logits, DataType.Float, "batch", _o.LastLogitsOnly ? 1L : "sequence", _c.VocabSize);
        if (_o.NextToken)
        {
            // [B,1,V] -> [B,1]: greedy decoding reads B ids instead of B·V logits (ties: the first index, as ONNX specifies)
            string next = _g.Op("/model/next_token/ArgMax", "ArgMax", [logits], Attr.Int("axis", 2), Attr.Int("keepdims", 0));
            _g.Output(StateNames.NextToken, next, DataType.Int64, "batch", 1L);
        }
        if (_o.HiddenStates)
        {
            for (int i = 0; i < hidden.Count; i++)
            {
                bool last = i == hidden.Count - 1 && _o.LastLogitsOnly;
                string hs = ToFloat($"/model/hidden_states.{i}", hidden[i]);
                string h = last ? _g.Op($"/model/hidden_states.{i}/Unsqueeze", "Unsqueeze", [hs, _g.Constant(1)])
                    : _g.Op($"/model/hidden_states.{i}/Reshape", "Reshape", [hs, ShapeBS(_c.HiddenSize)]);
                _g.Output(StateNames.Hidden(i), h, DataType.Float, "batch", last ? 1L : "sequence", _c.HiddenSize);
            }
        }
    }

    /// <summary>input_ids [B,S] ─► Gather ─► [B,S,E] ─► [B·S, H]; or inputs_embeds [B,S,E] ─► [B·S, H].</summary>
    private string MakeEmbedding()
    {
        string x;
        if (_o.InputsEmbeds)
        {
            x = _g.Input(StateNames.InputsEmbeds, DataType.Float, "batch", "sequence", _c.EmbeddingDim);
            if (_t != DataType.Float) x = _g.Op("/model/inputs_embeds/Cast", "Cast", [x], Attr.Int("to", (long)_t));
        }
        else
        {
            string ids = _g.Input(StateNames.InputIds, DataType.Int64, "batch", "sequence");
            x = _g.Op("/model/embeddings/Gather", "Gather", [_g.Weight("model.embeddings.weight", _w[WeightRole.Embedding], _t), ids]);
        }
        _bs = _g.Op("/model/batch_and_sequence/Shape", "Shape", [x], Attr.Int("start", 0), Attr.Int("end", 2)); // [B, S]
        if (_o.AttentionMask)
        {
            string mask = _maskInput = _g.Input(StateNames.AttentionMask, DataType.Int64, "batch", "sequence");
            string b = _g.Op("/model/attention_mask/Cast", "Cast", [mask], Attr.Int("to", (long)DataType.Bool));
            _mask = _g.Op("/model/attention_mask/Unsqueeze", "Unsqueeze", [b, _g.Constant(1)]); // [B,S] -> [B,1,S], broadcasts over heads
        }
        return _g.Op("/model/embeddings/Reshape", "Reshape", [x, _g.Constant(-1, _c.HiddenSize)]);
    }

    /// <summary>
    /// x ─► norm_mlstm ─► mLSTM layer ─► (+x) ─► norm_ffn ─► FFN ─► (+). Returns the residual stream and the FFN output
    /// still to be added to it: with our custom ops (the ONNX Runtime fast path) each residual Add is fused into the norm
    /// that follows it (com.microsoft::SkipSimplifiedLayerNormalization: one kernel reads both, writes the sum and the
    /// normed value), so the next block's first norm adds this one's FFN output. <paramref name="blockInput"/> is the
    /// summed input of this block (the previous block's output) when that sum happened here.
    /// </summary>
    private (string Residual, string Update) MakeBlock(int i, string x, string? update, out string? blockInput)
    {
        string p = $"/model/blocks.{i}";
        string h;
        (x, h) = AddAndNorm($"{p}/norm_mlstm", x, update, _w[WeightRole.NormMlstm, i], _w.Optional(WeightRole.NormMlstmBias, i), $"/model/blocks.{i - 1}/ffn_residual/Add");
        blockInput = update is null ? null : x;
        (x, h) = AddAndNorm($"{p}/norm_ffn", x, MakeMLstmLayer(i, h), _w[WeightRole.NormFfn, i], _w.Optional(WeightRole.NormFfnBias, i), $"{p}/mlstm_residual/Add");
        return (x, MakeFeedForward(i, h));
    }

    /// <summary>x' = x + update (when there is one), RMSNorm(x'): fused on the custom-op path, an Add and a norm otherwise.</summary>
    private (string Sum, string Normed) AddAndNorm(string p, string x, string? update, IWeightSource weight, IWeightSource? bias, string addName)
    {
        if (update is null) return (x, MakeRmsNorm(p, x, weight, bias));
        if (!Fused)
        {
            string sum = _g.Op(addName, "Add", [x, update]);
            return (sum, MakeRmsNorm(p, sum, weight, bias));
        }
        // outputs: normed, mean, inv_std_var, input_skip_bias_sum. The sum comes out in T, as HF's residual add; the norm
        // may read it before that rounding (ONNX Runtime's non-strict mode): a bf16-rounding-sized difference
        var o = _g.NodeWithOptionalOutputs($"{p}/SkipSimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
            [update, x, _g.Weight(InitName(p, "weight"), weight, _t)], [true, false, false, true], "com.microsoft",
            Attr.Float("epsilon", _c.NormEps));
        string y = bias is null ? o[0] : _g.Op($"{p}/Add", "Add", [o[0], _g.Weight(InitName(p, "bias"), bias, _t)]);
        return (o[3], y);
    }

    /// <summary>
    /// q, k, v, o = split(x W_qkvoᵀ); ĩ, f̃ = cap(x W_ifᵀ + b); h = mLSTM(q, k, v, ĩ, f̃; state);
    /// y = out_proj(σ(o) ⊙ MultiHeadLayerNorm(h)).
    /// </summary>
    private string MakeMLstmLayer(int i, string x)
    {
        string p = $"/model/blocks.{i}/mlstm";
        long qk = _c.QkDim, dv = _c.VDim, nh = _c.NumHeads;
        string qkvo = Gemm($"{p}/qkvo_proj", x, _w[WeightRole.QkvoProj, i], _w.Optional(WeightRole.QkvoProjBias, i), quantize: true); // [B·S, 2QK+2V]
        var (q, k, v, o) = Split4(_g.Node($"{p}/qkvo_proj/Split", "Split", [qkvo, _g.Constant(qk, qk, dv, dv)], 4, "", Attr.Int("axis", 1)));
        // gate pre-activations in float32 (x cast once; the i/f weights are 2·NH rows, stored float32)
        string gates = Gemm($"{p}/if_gate", ToFloat($"{p}/if_gate/input", x), _w[WeightRole.IfGate, i], _w[WeightRole.IfGateBias, i], DataType.Float); // [B·S, 2NH]
        string qh = Heads($"{p}/q_heads", q, _c.QkHeadDim), kh = Heads($"{p}/k_heads", k, _c.QkHeadDim), vh = Heads($"{p}/v_heads", v, _c.VHeadDim);
        string ih, fh;
        bool fusedGates = Fused && _maskInput is not null; // MLstmGates reads the mask input itself
        if (fusedGates)
        {
            // cap, mask and [B·S, 2NH] -> 2 × [B,NH,S] in one kernel (the ops below, fused)
            var g = _g.Node($"{p}/if_gate/{MLstmCustomOpEmitter.GatesOp}", MLstmCustomOpEmitter.GatesOp, [gates, _maskInput!], 2, MLstmCustomOpEmitter.Domain,
                Attr.Float("soft_cap", (float)(_c.GateSoftCap ?? 0)));
            (ih, fh) = (g[0], g[1]);
        }
        else
        {
            if (_c.GateSoftCap is { } cap) gates = SoftCap($"{p}/if_gate/soft_cap", gates, cap); // capped before the split, as HF's fused path
            var ifs = _g.Node($"{p}/if_gate/Split", "Split", [gates, _g.Constant(nh, nh)], 2, "", Attr.Int("axis", 1));
            ih = GateHeads($"{p}/igate_heads", ifs[0]);
            fh = GateHeads($"{p}/fgate_heads", ifs[1]);
        }
        if (_mask is not null && !fusedGates)
        {
            // A masked position (padding) must leave the state exactly as it was: ĩ = −inf gives a zero input gate
            // (exp(−inf − m) = 0), f̃ = +inf a forget gate of one (logsigmoid(+inf) = 0), and m' = max(lf + m, ĩ) = m.
            ih = _g.Op($"{p}/igate_heads/mask/Where", "Where", [_mask, ih, _g.Constant(float.NegativeInfinity)]);
            fh = _g.Op($"{p}/fgate_heads/mask/Where", "Where", [_mask, fh, _g.Constant(float.PositiveInfinity)]);
        }

        string c0 = _g.Input(StateNames.Past(i, "C"), DataType.Float, "batch", nh, _c.QkHeadDim, _c.VHeadDim);
        string n0 = _g.Input(StateNames.Past(i, "n"), DataType.Float, "batch", nh, _c.QkHeadDim);
        string m0 = _g.Input(StateNames.Past(i, "m"), DataType.Float, "batch", nh, 1L);
        // our custom op takes q/k/v in T (gate math and state float32 inside); the standard-op cell computes in float32
        bool castCell = _t != DataType.Float && _o.MLstmKernels != MLstmKernels.Custom;
        if (castCell)
        {
            qh = ToFloat($"{p}/q_heads", qh);
            kh = ToFloat($"{p}/k_heads", kh);
            vh = ToFloat($"{p}/v_heads", vh);
        }
        var cell = _cell($"{p}/cell", qh, kh, vh, ih, fh, c0, n0, m0);
        _g.Output(StateNames.Present(i, "C"), cell.C, DataType.Float, "batch", nh, _c.QkHeadDim, _c.VHeadDim);
        _g.Output(StateNames.Present(i, "n"), cell.N, DataType.Float, "batch", nh, _c.QkHeadDim);
        _g.Output(StateNames.Present(i, "m"), cell.M, DataType.Float, "batch", nh, 1L);

        if (Fused)
        {
            // σ(o) ⊙ (LayerNorm per head over DV · w + b), read from the cell's [B,NH,S,DV] and written as [B·S, NH·DV]
            var mb0 = _w.Optional(WeightRole.MultiheadNormBias, i);
            string bias = mb0 is null
                ? _g.ConstantTensor($"/model/constants/{_t.ToString().ToUpperInvariant()}/zeros_{dv}", [dv], new float[dv], _t)
                : _g.Weight($"model.blocks.{i}.mlstm.multihead_norm.bias", mb0, _t);
            string gated = _g.Node($"{p}/multihead_norm/{MLstmCustomOpEmitter.HeadNormGateOp}", MLstmCustomOpEmitter.HeadNormGateOp,
                [cell.H, o, _g.Weight($"model.blocks.{i}.mlstm.multihead_norm.weight", _w[WeightRole.MultiheadNorm, i], _t), bias], 1,
                MLstmCustomOpEmitter.Domain, Attr.Float("eps", _c.NormEps))[0];
            return Gemm($"{p}/out_proj", gated, _w[WeightRole.OutProj, i], _w.Optional(WeightRole.OutProjBias, i), quantize: true);
        }
        // [B,NH,S,DV] -> [B,S,NH,DV]; LayerNorm per head over DV (mean-centred), then the flat affine after it
        string cellH = castCell ? _g.Op($"{p}/h/Cast", "Cast", [cell.H], Attr.Int("to", (long)_t)) : cell.H;
        string h = _g.Op($"{p}/h/Transpose", "Transpose", [cellH], Attr.Ints("perm", 0, 2, 1, 3));
        h = _g.Op($"{p}/multihead_norm/LayerNormalization", "LayerNormalization",
            [h, _g.ConstantTensor($"/model/constants/{_t.ToString().ToUpperInvariant()}/ones_{_c.VHeadDim}", [_c.VHeadDim], Enumerable.Repeat(1f, (int)_c.VHeadDim).ToArray(), _t)],
            Attr.Int("axis", -1), Attr.Float("epsilon", _c.NormEps));
        h = _g.Op($"{p}/multihead_norm/Reshape", "Reshape", [h, _g.Constant(-1, dv)]);                      // [B·S, NH·DV]
        h = _g.Op($"{p}/multihead_norm/Mul", "Mul", [h, _g.Weight($"model.blocks.{i}.mlstm.multihead_norm.weight", _w[WeightRole.MultiheadNorm, i], _t)]);
        if (_w.Optional(WeightRole.MultiheadNormBias, i) is { } mb)
        {
            h = _g.Op($"{p}/multihead_norm/Add", "Add", [h, _g.Weight($"model.blocks.{i}.mlstm.multihead_norm.bias", mb, _t)]);
        }
        h = _g.Op($"{p}/ogate/Mul", "Mul", [_g.Op($"{p}/ogate/Sigmoid", "Sigmoid", [o]), h]);
        return Gemm($"{p}/out_proj", h, _w[WeightRole.OutProj, i], _w.Optional(WeightRole.OutProjBias, i), quantize: true); // [B·S, H]
    }

    /// <summary>gate, z = split(x W_upᵀ); y = (silu(gate) ⊙ z) W_downᵀ.</summary>
    private string MakeFeedForward(int i, string x)
    {
        string p = $"/model/blocks.{i}/ffn";
        string up = Gemm($"{p}/proj_up_gate_z", x, _w[WeightRole.FfnUpGateZ, i], _w.Optional(WeightRole.FfnUpGateZBias, i), quantize: true);
        if (Fused)
        {
            string y = _g.Node($"{p}/{MLstmCustomOpEmitter.SwiGluOp}", MLstmCustomOpEmitter.SwiGluOp, [up], 1, MLstmCustomOpEmitter.Domain)[0]; // [B·S, FFN]
            return Gemm($"{p}/proj_down", y, _w[WeightRole.FfnDown, i], _w.Optional(WeightRole.FfnDownBias, i), quantize: true);
        }
        var gz = _g.Node($"{p}/proj_up_gate_z/Split", "Split", [up, _g.Constant(_c.FfnDim, _c.FfnDim)], 2, "", Attr.Int("axis", 1));
        string silu = _g.Op($"{p}/silu/Mul", "Mul", [gz[0], _g.Op($"{p}/silu/Sigmoid", "Sigmoid", [gz[0]])]);
        string z = _g.Op($"{p}/gate/Mul", "Mul", [silu, gz[1]]);
        return Gemm($"{p}/proj_down", z, _w[WeightRole.FfnDown, i], _w.Optional(WeightRole.FfnDownBias, i), quantize: true);
    }

    /// <summary>RMSNorm over the last axis with fp32 statistics, eps inside the rsqrt; bias added after.</summary>
    private string MakeRmsNorm(string p, string x, IWeightSource weight, IWeightSource? bias)
    {
        string w = _g.Weight(InitName(p, "weight"), weight, _t);
        string y = _g.Op($"{p}/RMSNormalization", "RMSNormalization", [x, w],
            Attr.Int("axis", -1), Attr.Float("epsilon", _c.NormEps), Attr.Int("stash_type", 1));
        return bias is null ? y : _g.Op($"{p}/Add", "Add", [y, _g.Weight(InitName(p, "bias"), bias, _t)]);
    }

    /// <summary>y = x Wᵀ + b with W in the checkpoint's [out, in] layout, stored in <paramref name="type"/> (default: the model's).</summary>
    private string Gemm(string p, string x, IWeightSource weight, IWeightSource? bias, DataType? type = null, bool quantize = false)
    {
        if (quantize && _o.QuantizeBits == 4) return MatMulNBits(p, x, weight, bias);
        string w = _g.Weight(InitName(p, "weight"), weight, type ?? _t);
        string[] inputs = bias is null ? [x, w] : [x, w, _g.Weight(InitName(p, "bias"), bias, type ?? _t)];
        return _g.Op($"{p}/Gemm", "Gemm", inputs, Attr.Int("transB", 1));
    }

    /// <summary>y = x Wᵀ + b with W as 4-bit blocks (com.microsoft::MatMulNBits; W stays [N, K], as the checkpoint has it).</summary>
    private string MatMulNBits(string p, string x, IWeightSource weight, IWeightSource? bias)
    {
        var q = new Int4Quantizer(weight, _o.QuantizeBlockSize, _t);
        string name = InitName(p, "weight");
        string b = _g.RawWeight($"{name}.q4", DataType.Uint8, q.BShape, q.BBytes, q.B);
        string scales = _g.RawWeight($"{name}.scales", _t, q.ScalesShape, q.ScalesBytes, q.Scales);
        string zeros = _g.RawWeight($"{name}.zero_points", DataType.Uint8, q.ZerosShape, q.ZerosBytes, q.ZeroPoints);
        string[] inputs = bias is null ? [x, b, scales, zeros] : [x, b, scales, zeros, "", _g.Weight(InitName(p, "bias"), bias, _t)];
        return _g.Node($"{p}/MatMulNBits", "MatMulNBits", inputs, 1, "com.microsoft",
            Attr.Int("K", q.K), Attr.Int("N", q.N), Attr.Int("bits", 4), Attr.Int("block_size", q.BlockSize))[0];
    }

    /// <summary>x as float32 (a Cast when the model is float16 or bfloat16).</summary>
    private string ToFloat(string p, string x) =>
        _t == DataType.Float ? x : _g.Op($"{p}/CastToFloat", "Cast", [x], Attr.Int("to", (long)DataType.Float));

    /// <summary>cap · tanh(x / cap).</summary>
    private string SoftCap(string p, string x, double cap)
    {
        string c = _g.Constant((float)cap);
        return _g.Op($"{p}/Mul", "Mul", [_g.Op($"{p}/Tanh", "Tanh", [_g.Op($"{p}/Div", "Div", [x, c])]), c]);
    }

    /// <summary>[B·S, NH·D] -> [B, S, NH, D] -> [B, NH, S, D] (head h = columns [h·D, (h+1)·D)).</summary>
    private string Heads(string p, string x, long d)
    {
        string r = _g.Op($"{p}/Reshape", "Reshape", [x, ShapeBS(_c.NumHeads, d)]);
        return _g.Op($"{p}/Transpose", "Transpose", [r], Attr.Ints("perm", 0, 2, 1, 3));
    }

    /// <summary>[B·S, NH] -> [B, S, NH] -> [B, NH, S].</summary>
    private string GateHeads(string p, string x)
    {
        string r = _g.Op($"{p}/Reshape", "Reshape", [x, ShapeBS(_c.NumHeads)]);
        return _g.Op($"{p}/Transpose", "Transpose", [r], Attr.Ints("perm", 0, 2, 1));
    }

    /// <summary>[B·S, H] -> [B, S, H] -> last position [B, H].</summary>
    private string MakeLastPosition(string x)
    {
        string r = _g.Op("/model/last_position/Reshape", "Reshape", [x, ShapeBS(_c.HiddenSize)]);
        string s = _g.Op("/model/last_position/Slice", "Slice", [r, _g.Constant(-1), _g.Constant(long.MaxValue), _g.Constant(1)]); // [B,1,H]
        return _g.Op("/model/last_position/Squeeze", "Squeeze", [s, _g.Constant(1)]);
    }

    /// <summary>The shape [B, S, tail...] as an int64 tensor, built once per tail.</summary>
    private string ShapeBS(params long[] tail)
    {
        string key = string.Join(",", tail);
        if (!_shapes.TryGetValue(key, out var s))
        {
            s = _g.Op($"/model/shape_B_S_{string.Join("_", tail)}/Concat", "Concat", [_bs, _g.Constant(tail)], Attr.Int("axis", 0));
            _shapes[key] = s;
        }
        return s;
    }

    private static (string, string, string, string) Split4(string[] o) => (o[0], o[1], o[2], o[3]);

    /// <summary>Initializer names follow the node path: /model/blocks.3/mlstm/qkvo_proj -> model.blocks.3.mlstm.qkvo_proj.weight.</summary>
    private static string InitName(string path, string what) => $"{path.TrimStart('/').Replace('/', '.')}.{what}";
}
