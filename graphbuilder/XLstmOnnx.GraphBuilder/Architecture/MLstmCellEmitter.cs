using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Graph;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.GraphBuilder.Architecture;

/// <summary>
/// The mLSTM cell from standard ONNX ops, on HF's native schedule (<see cref="Schedule"/>;
/// docs/hf-semantics.md, "The inference schedule"): the sequence is cut into segments of
/// <c>max_inference_chunksize</c>; in each segment ⌊T/L⌋ whole chunks run in the chunkwise form and the remaining
/// tokens in the recurrent form (which for S = 1 is the step kernel). Gate and state math is float32, m₀ = 0 means
/// "start". Shapes use mlstm_kernels' letters: B, NH, S, DQK, DV, L.
/// <code>
///   q,k,v,i,f ──► Loop over segments ──► Loop over chunks (chunkwise) ──► Loop over tail tokens (recurrent)
///   (C,n,m) carried through all three; h of each chunk/token appended along S
/// </code>
/// </summary>
internal sealed class MLstmCellEmitter(OnnxGraph g, XLstmConfig c, bool roundStateToBf16 = false)
{
    private readonly Schedule _schedule = c.Schedule;
    private readonly long _l = c.ChunkSize;
    private readonly float _scale = (float)Math.Pow(c.QkHeadDim, -0.5); // only q is scaled (docs/numerics.md, "Only q is scaled")
    private readonly float _eps = (float)c.Eps;

    /// <summary>Emits the cell under <paramref name="path"/>; returns h [B,NH,S,DV] and the final state (all float32).</summary>
    public (string H, CellState State) Emit(string path, string q, string k, string v, string iGate, string fGate, CellState past)
    {
        // log forget gate, stable: logsigmoid(f) = -softplus(-f)   [B,NH,S]
        string lf = g.Op($"{path}/logsigmoid/Neg_1", "Neg", [g.Op($"{path}/logsigmoid/Softplus", "Softplus", [g.Op($"{path}/logsigmoid/Neg_0", "Neg", [fGate])])]);
        var inputs = new CellInputs(q, k, v, iGate, lf);
        string seqLen = g.Op($"{path}/seq_len/Shape", "Shape", [q], Attr.Int("start", 2), Attr.Int("end", 3)); // [1]
        string nSeg = _schedule.NumSegments(new OnnxPositionMath(g, path), seqLen);
        // h accumulates along S, starting empty: [B,NH,0,DV]
        string h0 = g.Op($"{path}/h_empty/Slice", "Slice", [v, g.Constant(0), g.Constant(0), g.Constant(2)]);

        string sp = $"{path}/segments";
        var body = g.Subgraph(sp);
        var (iter, carried) = LoopInputs(body, sp);
        var segment = _schedule.Split(new OnnxPositionMath(body, sp), Vec(body, $"{sp}/iter", iter), seqLen);

        var chunkBody = EmitChunkBody(body, $"{sp}/chunks", inputs, segment.Start);
        var afterChunks = body.Node($"{sp}/chunks/Loop", "Loop", [Scalar(body, $"{sp}/chunks/trip", segment.Chunks), "", .. carried], 4, "",
            Attr.Graph("body", chunkBody));
        var stepBody = EmitStepBody(body, $"{sp}/tail", inputs, segment.TailStart);
        var afterTail = body.Node($"{sp}/tail/Loop", "Loop", [Scalar(body, $"{sp}/tail/trip", segment.TailLength), "", .. afterChunks], 4, "",
            Attr.Graph("body", stepBody));
        LoopOutputs(body, sp, afterTail);

        var outs = g.Node($"{sp}/Loop", "Loop", [Scalar(g, $"{sp}/trip", nSeg), "", past.C, past.N, past.M, h0], 4, "",
            Attr.Graph("body", body));
        return (outs[3], new CellState(outs[0], outs[1], outs[2]));
    }

    private sealed record CellInputs(string Q, string K, string V, string I, string LogF);

    /// <summary>
    /// One chunk of L tokens in the chunkwise form (docs/hf-semantics.md, "Chunkwise form"), from the chunk-start
    /// state (C, n, m): intra-chunk outputs with the stabilizer m_j = max(b_j + m, max_s(b_j − b_s + ĩ_s)), then the
    /// state at chunk end.
    /// </summary>
    private OnnxGraph EmitChunkBody(OnnxGraph parent, string p, CellInputs x, string segStart)
    {
        var b = parent.Subgraph(p);
        var (iter, st) = LoopInputs(b, p);
        string C = st[0], n = st[1], m = st[2], hAcc = st[3];
        string p0 = _schedule.ChunkStart(new OnnxPositionMath(b, p), segStart, Vec(b, $"{p}/iter", iter));
        string p1 = b.Op($"{p}/pos_end/Add", "Add", [p0, g.Constant(_l)]);
        string Chunk(string name, string t) => b.Op($"{p}/{name}/Slice", "Slice", [t, p0, p1, g.Constant(2)]);
        string q = Chunk("q", x.Q), k = Chunk("k", x.K), v = Chunk("v", x.V); // [B,NH,L,DQK|DV]
        string ig = Chunk("igate", x.I), lf = Chunk("logf", x.LogF);          // [B,NH,L]

        string bb = b.Op($"{p}/b/CumSum", "CumSum", [lf, g.ScalarInt64(2)]);    // b_j = Σ_{r≤j} lf_r   [B,NH,L]
        string gg = b.Op($"{p}/g/Slice", "Slice", [bb, g.Constant(_l - 1), g.Constant(_l), g.Constant(2)]); // b_{L-1} [B,NH,1]
        string mPrev4 = b.Op($"{p}/m_prev/Unsqueeze", "Unsqueeze", [m, g.Constant(-1)]); // [B,NH,1,1]

        // logD_{j,s} = b_j − b_s + ĩ_s for s ≤ j, −inf above the diagonal      [B,NH,L,L]
        string bCol = b.Op($"{p}/b_col/Unsqueeze", "Unsqueeze", [bb, g.Constant(-1)]);          // [B,NH,L,1]
        string bRow = b.Op($"{p}/b_row/Unsqueeze", "Unsqueeze", [bb, g.Constant(-2)]);          // [B,NH,1,L]
        string iRow = b.Op($"{p}/i_row/Unsqueeze", "Unsqueeze", [ig, g.Constant(-2)]);          // [B,NH,1,L]
        string logD = b.Op($"{p}/logD/Add", "Add", [b.Op($"{p}/logD/Sub", "Sub", [bCol, bRow]), iRow]);
        logD = b.Op($"{p}/logD/Where", "Where", [g.LowerTriangular(_l), logD, g.Constant(float.NegativeInfinity)]);
        string mIntra = b.Op($"{p}/m_intra/ReduceMax", "ReduceMax", [logD, g.Constant(-1)], Attr.Int("keepdims", 1)); // [B,NH,L,1]
        string mInter = b.Op($"{p}/m_inter/Add", "Add", [bCol, mPrev4]);                                            // [B,NH,L,1]
        string mj = b.Op($"{p}/m/Max", "Max", [mInter, mIntra]);
        string D = b.Op($"{p}/D/Exp", "Exp", [b.Op($"{p}/D/Sub", "Sub", [logD, mj])]);

        // M = (Q Kᵀ · s) ⊙ D    [B,NH,L,L]
        string kT = b.Op($"{p}/kT/Transpose", "Transpose", [k], Attr.Ints("perm", 0, 1, 3, 2)); // [B,NH,DQK,L]
        string qk = b.Op($"{p}/qk/MatMul", "MatMul", [q, kT]);
        string M = b.Op($"{p}/M/Mul_1", "Mul", [b.Op($"{p}/M/Mul_0", "Mul", [qk, g.Constant(_scale)]), D]);
        // q̄_j = q_j · exp(m_inter_j − m_j) · s   [B,NH,L,DQK]
        string qbar = b.Op($"{p}/qbar/Mul_1", "Mul", [b.Op($"{p}/qbar/Mul_0", "Mul",
            [q, b.Op($"{p}/qbar/Exp", "Exp", [b.Op($"{p}/qbar/Sub", "Sub", [mInter, mj])])]), g.Constant(_scale)]);
        string num = b.Op($"{p}/num/Add", "Add", [b.Op($"{p}/num/MatMul_0", "MatMul", [qbar, C]), b.Op($"{p}/num/MatMul_1", "MatMul", [M, v])]);
        string qn = b.Op($"{p}/qn/Add", "Add", [
            b.Op($"{p}/qn/MatMul", "MatMul", [qbar, b.Op($"{p}/n_col/Unsqueeze", "Unsqueeze", [n, g.Constant(-1)])]), // [B,NH,L,1]
            b.Op($"{p}/qn/ReduceSum", "ReduceSum", [M, g.Constant(-1)], Attr.Int("keepdims", 1))]);
        string h = Normalize(b, p, num, qn, mj);                                                                 // [B,NH,L,DV]

        // state at the chunk's end: a_j = g − b_j + ĩ_j, m' = max(g + m, max_j a_j)
        string a = b.Op($"{p}/a/Add", "Add", [b.Op($"{p}/a/Sub", "Sub", [gg, bb]), ig]);                          // [B,NH,L]
        string gm = b.Op($"{p}/g_plus_m/Add", "Add", [gg, m]);                                                   // [B,NH,1]
        string mNew = b.Op($"{p}/m_new/Max", "Max", [gm, b.Op($"{p}/a_max/ReduceMax", "ReduceMax", [a, g.Constant(-1)], Attr.Int("keepdims", 1))]);
        string aBar = b.Op($"{p}/a_bar/Exp", "Exp", [b.Op($"{p}/a_bar/Sub", "Sub", [a, mNew])]);                  // [B,NH,L]
        string gBar = b.Op($"{p}/g_bar/Exp", "Exp", [b.Op($"{p}/g_bar/Sub", "Sub", [gm, mNew])]);                 // [B,NH,1]
        string kA = b.Op($"{p}/kA/Mul", "Mul", [k, b.Op($"{p}/a_bar_col/Unsqueeze", "Unsqueeze", [aBar, g.Constant(-1)])]); // [B,NH,L,DQK]
        string kAT = b.Op($"{p}/kAT/Transpose", "Transpose", [kA], Attr.Ints("perm", 0, 1, 3, 2));               // [B,NH,DQK,L]
        string gBar4 = b.Op($"{p}/g_bar4/Unsqueeze", "Unsqueeze", [gBar, g.Constant(-1)]);                        // [B,NH,1,1]
        string cNew = b.Op($"{p}/C_new/Add", "Add", [b.Op($"{p}/C_decay/Mul", "Mul", [gBar4, C]), b.Op($"{p}/kv/MatMul", "MatMul", [kAT, v])]);
        string nNew = b.Op($"{p}/n_new/Add", "Add", [b.Op($"{p}/n_decay/Mul", "Mul", [gBar, n]),
            b.Op($"{p}/kA_sum/ReduceSum", "ReduceSum", [kA, g.Constant(2)], Attr.Int("keepdims", 0))]);        // [B,NH,DQK]
        string hNew = b.Op($"{p}/h_acc/Concat", "Concat", [hAcc, h], Attr.Int("axis", 2));
        LoopOutputs(b, p, [Stored(b, $"{p}/C_new", cNew), Stored(b, $"{p}/n_new", nNew), mNew, hNew]);
        return b;
    }

    /// <summary>
    /// The state a piece carries to the next: as computed, or with <c>--state-dtype bf16</c> rounded to bfloat16 after
    /// every chunk and recurrent token (Cast there and back), as the custom op does (customops/src/kernels/mlstm_params.h),
    /// so reading a prompt in pieces on piece boundaries gives the bits of one call.
    /// </summary>
    private string Stored(OnnxGraph b, string p, string x) => !roundStateToBf16 ? x
        : b.Op($"{p}/stored/CastBack", "Cast", [b.Op($"{p}/stored/Cast", "Cast", [x], Attr.Int("to", (long)DataType.Bfloat16))], Attr.Int("to", (long)DataType.Float));

    /// <summary>One token in the recurrent form (docs/hf-semantics.md, "Recurrent step"; HF's step kernel).</summary>
    private OnnxGraph EmitStepBody(OnnxGraph parent, string p, CellInputs x, string tailStart)
    {
        var b = parent.Subgraph(p);
        var (iter, st) = LoopInputs(b, p);
        string C = st[0], n = st[1], m = st[2], hAcc = st[3];
        string p0 = b.Op($"{p}/pos/Add", "Add", [tailStart, Vec(b, $"{p}/iter", iter)]);
        string p1 = b.Op($"{p}/pos_end/Add", "Add", [p0, g.Constant(1)]);
        string Token(string name, string t) => b.Op($"{p}/{name}/Slice", "Slice", [t, p0, p1, g.Constant(2)]);
        string q = Token("q", x.Q), k = Token("k", x.K), v = Token("v", x.V);  // [B,NH,1,DQK|DV]
        string ig = Token("igate", x.I), lf = Token("logf", x.LogF);           // [B,NH,1]

        string fm = b.Op($"{p}/f_plus_m/Add", "Add", [lf, m]);
        string mNew = b.Op($"{p}/m_new/Max", "Max", [fm, ig]);                                                    // m_t = max(lf + m, ĩ)
        string fa = b.Op($"{p}/f_act/Exp", "Exp", [b.Op($"{p}/f_act/Sub", "Sub", [fm, mNew])]);                  // [B,NH,1]
        string ia = b.Op($"{p}/i_act/Exp", "Exp", [b.Op($"{p}/i_act/Sub", "Sub", [ig, mNew])]);
        string kT = b.Op($"{p}/kT/Transpose", "Transpose", [k], Attr.Ints("perm", 0, 1, 3, 2));                 // [B,NH,DQK,1]
        string kv = b.Op($"{p}/kv/MatMul", "MatMul", [kT, v]);                                                    // [B,NH,DQK,DV]
        string Col(string name, string t) => b.Op($"{p}/{name}/Unsqueeze", "Unsqueeze", [t, g.Constant(-1)]);
        string cNew = b.Op($"{p}/C_new/Add", "Add", [b.Op($"{p}/C_decay/Mul", "Mul", [Col("f_act4", fa), C]),
            b.Op($"{p}/C_in/Mul", "Mul", [Col("i_act4", ia), kv])]);
        string kVec = b.Op($"{p}/k_vec/Squeeze", "Squeeze", [k, g.Constant(2)]);                                // [B,NH,DQK]
        string nNew = b.Op($"{p}/n_new/Add", "Add", [b.Op($"{p}/n_decay/Mul", "Mul", [fa, n]), b.Op($"{p}/n_in/Mul", "Mul", [ia, kVec])]);
        string qs = b.Op($"{p}/q_scaled/Mul", "Mul", [q, g.Constant(_scale)]);                                   // [B,NH,1,DQK]
        string num = b.Op($"{p}/num/MatMul", "MatMul", [qs, cNew]);                                               // [B,NH,1,DV]
        string qn = b.Op($"{p}/qn/MatMul", "MatMul", [qs, Col("n_col", nNew)]);                                  // [B,NH,1,1]
        string h = Normalize(b, p, num, qn, Col("m4", mNew));
        string hNew = b.Op($"{p}/h_acc/Concat", "Concat", [hAcc, h], Attr.Int("axis", 2));
        LoopOutputs(b, p, [Stored(b, $"{p}/C_new", cNew), Stored(b, $"{p}/n_new", nNew), mNew, hNew]);
        return b;
    }

    /// <summary>h = num / (max(|q·n|, exp(−m)) + eps): eps outside the max, abs kept (docs/numerics.md, "The denominator").</summary>
    private string Normalize(OnnxGraph b, string p, string num, string qn, string m)
    {
        string floor = b.Op($"{p}/den/Exp", "Exp", [b.Op($"{p}/den/Neg", "Neg", [m])]);
        string den = b.Op($"{p}/den/Add", "Add", [b.Op($"{p}/den/Max", "Max", [b.Op($"{p}/den/Abs", "Abs", [qn]), floor]), g.Constant(_eps)]);
        return b.Op($"{p}/h/Div", "Div", [num, den]);
    }

    /// <summary>Declares Loop body inputs: iteration (int64 scalar), condition, then C, n, m, h (float32).</summary>
    private static (string Iter, string[] State) LoopInputs(OnnxGraph body, string p)
    {
        string iter = $"{p}/iter_num", cond = $"{p}/cond_in";
        body.Proto.Input.Add(OnnxGraph.ValueInfo(iter, DataType.Int64, []));
        body.Proto.Input.Add(OnnxGraph.ValueInfo(cond, DataType.Bool, []));
        string[] state = [$"{p}/C_in", $"{p}/n_in", $"{p}/m_in", $"{p}/h_in"];
        foreach (var s in state) body.Proto.Input.Add(OnnxGraph.ValueInfo(s, DataType.Float, null));
        return (iter, state);
    }

    /// <summary>Declares Loop body outputs: the condition passed through, then the carried C, n, m, h.</summary>
    private static void LoopOutputs(OnnxGraph body, string p, IReadOnlyList<string> state)
    {
        string cond = body.Op($"{p}/cond_out/Identity", "Identity", [$"{p}/cond_in"]);
        body.Proto.Output.Add(OnnxGraph.ValueInfo(cond, DataType.Bool, []));
        foreach (var s in state) body.Proto.Output.Add(OnnxGraph.ValueInfo(s, DataType.Float, null));
    }

    /// <summary>A 0-D int64 scalar as a [1] vector (Slice and arithmetic with [1] constants).</summary>
    private string Vec(OnnxGraph b, string p, string scalar) => b.Op($"{p}/Reshape", "Reshape", [scalar, g.Constant(1)]);

    /// <summary>A [1] int64 vector as a 0-D scalar (Loop's trip count).</summary>
    private string Scalar(OnnxGraph b, string p, string vec) => b.Op($"{p}/Reshape", "Reshape", [vec, g.Constant([])]);
}

/// <summary>Position arithmetic as int64 [1] nodes of <paramref name="graph"/>, named <c>{path}/{what}/{Op}</c>.</summary>
internal sealed class OnnxPositionMath(OnnxGraph graph, string path) : IPositionMath<string>
{
    public string Const(long value) => graph.Constant(value);
    public string Add(string what, string a, string b) => graph.Op($"{path}/{what}/Add", "Add", [a, b]);
    public string Sub(string what, string a, string b) => graph.Op($"{path}/{what}/Sub", "Sub", [a, b]);
    public string Mul(string what, string a, string b) => graph.Op($"{path}/{what}/Mul", "Mul", [a, b]);
    public string Div(string what, string a, string b) => graph.Op($"{path}/{what}/Div", "Div", [a, b]); // int64: truncates (= floor, operands ≥ 0)
    public string Min(string what, string a, string b) => graph.Op($"{path}/{what}/Min", "Min", [a, b]);
}
