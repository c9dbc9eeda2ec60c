namespace XLstmOnnx.Contract;

/// <summary>
/// Our custom-op domain (customops/, libxlstm_customops.so): its name, version and ops, as exported graphs name them.
/// Attributes and shapes: docs/exported-graph.md, "Custom ops".
/// </summary>
public static class CustomOps
{
    /// <summary>The domain; the model imports it at <see cref="DomainVersion"/>.</summary>
    public const string Domain = "ai.xlstm";
    public const int DomainVersion = 1;
    /// <summary>The mLSTM cell on HF's schedule, any S ≥ 1 (S = 1: the step).</summary>
    public const string Chunkwise = "MLstmChunkwise";
    /// <summary>The mLSTM cell for one token (S = 1 only), for graphs that only decode; the exporter does not emit it.</summary>
    public const string Step = "MLstmStep";
    /// <summary>
    /// The mixed graph's two cells in one node, read from the stream's q, k, v rows: the decode lane's step and the
    /// prompt lane's cell on HF's schedule (on CUDA side by side on two streams).
    /// </summary>
    public const string Lanes = "MLstmLanes";
    /// <summary>The mixed graph's gates: <see cref="Gates"/> on each lane's rows of the stream's pre-activations.</summary>
    public const string GatesLanes = "MLstmGatesLanes";
    /// <summary>The mixed graph's gated output: <see cref="HeadNormGate"/> on each lane, written to its rows of the stream.</summary>
    public const string HeadNormGateLanes = "MultiHeadNormGateLanes";
    /// <summary>Gate soft cap, attention mask and head layout in one op.</summary>
    public const string Gates = "MLstmGates";
    /// <summary>silu(gate) ⊙ z over the FFN's concatenated gate/up projection.</summary>
    public const string SwiGlu = "SwiGlu";
    /// <summary>σ(o) ⊙ MultiHeadLayerNorm(h): the mLSTM layer's output before out_proj.</summary>
    public const string HeadNormGate = "MultiHeadNormGate";
    /// <summary>y = x Wᵀ (+ b), W [N, K]; decode steps (S = 1) on a batch-invariant kernel (docs/serving.md, "Batch invariance").</summary>
    public const string Linear = "Linear";
}
