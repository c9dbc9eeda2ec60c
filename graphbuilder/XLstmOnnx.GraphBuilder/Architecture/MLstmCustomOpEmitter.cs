using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Graph;

namespace XLstmOnnx.GraphBuilder.Architecture;

/// <summary>Emits one mLSTM cell: (q, k, v, ĩ, f̃, C, n, m) under a node path → (h, C', n', m').</summary>
internal delegate (string H, string C, string N, string M) MLstmCellEmit(string path, string q, string k, string v,
    string iGate, string fGate, string c0, string n0, string m0);

/// <summary>
/// The mLSTM cell as one node of our custom-op domain (customops/, libxlstm_customops.so), with the same contract as
/// <see cref="MLstmCellEmitter"/>: q, k [B,NH,S,DQK], v [B,NH,S,DV], soft-capped gate pre-activations [B,NH,S] and
/// the float32 state in; h [B,NH,S,DV] and the new state out.
/// <code>
///   q,k,v,ĩ,f̃,C,n,m ──► ai.xlstm::MLstmChunkwise(chunk_size, max_inference_chunksize, eps) ──► h,C',n',m'
/// </code>
/// The op takes any S ≥ 1 and follows HF's native schedule itself (segments of max_inference_chunksize, ⌊T/L⌋·L
/// tokens chunkwise, the rest recurrent; S = 1 is the step kernel), so the graph has no If and no Loop: the same node
/// serves prompts and decode steps, and a decode graph can be captured as a CUDA graph. MLstmStep (S = 1 only) is in
/// the domain too, for graphs that only ever decode; this emitter does not need it.
/// </summary>
internal sealed class MLstmCustomOpEmitter(OnnxGraph g, XLstmConfig c)
{
    /// <summary>Our op domain; the model imports it at <see cref="DomainVersion"/>.</summary>
    public const string Domain = "ai.xlstm";
    public const int DomainVersion = 1;
    public const string ChunkwiseOp = "MLstmChunkwise";
    public const string StepOp = "MLstmStep";
    /// <summary>Gate soft cap, attention mask and head layout in one op (customops/src/ops/fused_ops.h).</summary>
    public const string GatesOp = "MLstmGates";
    /// <summary>silu(gate) ⊙ z over the fused FFN up projection.</summary>
    public const string SwiGluOp = "SwiGlu";
    /// <summary>σ(o) ⊙ MultiHeadLayerNorm(h): the mLSTM layer's output before out_proj.</summary>
    public const string HeadNormGateOp = "MultiHeadNormGate";

    /// <summary>Emits the node under <paramref name="path"/>; returns h and the final C, n, m.</summary>
    public (string H, string C, string N, string M) Emit(string path, string q, string k, string v, string iGate, string fGate,
        string c0, string n0, string m0)
    {
        var outs = g.Node($"{path}/{ChunkwiseOp}", ChunkwiseOp, [q, k, v, iGate, fGate, c0, n0, m0], 4, Domain,
            Attr.Int("chunk_size", c.ChunkSize),
            Attr.Int("max_inference_chunksize", c.MaxInferenceChunksize),
            Attr.Float("eps", c.Eps));
        return (outs[0], outs[1], outs[2], outs[3]);
    }
}
