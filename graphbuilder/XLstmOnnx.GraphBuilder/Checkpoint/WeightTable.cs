using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Config;

namespace XLstmOnnx.GraphBuilder.Checkpoint;

/// <summary>What a weight does in the graph. Projections are always concatenated (one Gemm for q/k/v/o, one for i/f, one
/// for the FFN's gate and up), whatever the checkpoint's <c>weight_mode</c>.</summary>
public enum WeightRole
{
    Embedding, OutNorm, LmHead,
    NormMlstm, NormMlstmBias,
    QkvoProj, QkvoProjBias,
    IfGate, IfGateBias,
    MultiheadNorm, MultiheadNormBias,
    OutProj, OutProjBias,
    NormFfn, NormFfnBias,
    FfnUpGateZ, FfnUpGateZBias,
    FfnDown, FfnDownBias,
}

/// <summary>
/// The only place that knows checkpoint tensor names. One row per graph role: the checkpoint tensors that make it
/// (concatenated along dim 0 in single mode, exactly as NX-AI's convert_single_weights_to_fused_weights), their
/// expected shapes, and whether the row is present. Binding checks every name and shape and that nothing is left over.
/// </summary>
public sealed class WeightTable
{
    /// <summary>One checkpoint tensor with the shape the config implies.</summary>
    public sealed record Part(string Name, long[] Shape);

    /// <summary>A graph role, the tensors that make it, and whether this config has it.</summary>
    public sealed record Row(WeightRole Role, int Block, IReadOnlyList<Part> Parts, bool Present, WeightRole? TiedTo = null);

    private readonly XLstmConfig _c;

    public WeightTable(XLstmConfig config)
    {
        _c = config;
        Rows = BuildRows();
    }

    /// <summary>All rows: globals (Block = -1) then every block's.</summary>
    public IReadOnlyList<Row> Rows { get; }

    private List<Row> BuildRows()
    {
        long V = _c.VocabSize, E = _c.EmbeddingDim, H = _c.HiddenSize, NH = _c.NumHeads;
        long QK = _c.QkDim, DV = _c.VDim, UP = _c.FfnDim;
        bool bias = _c.UseBias, concatenated = _c.ConcatenatedWeights; // weight_mode "fused"
        var rows = new List<Row>
        {
            new(WeightRole.Embedding, -1, [new("backbone.embeddings.weight", [V, E])], true),
            new(WeightRole.OutNorm, -1, [new("backbone.out_norm.weight", [H])], true), // never a bias in HF
            // tied: used when present (as transformers 5.17 does), else the embedding stands in
            new(WeightRole.LmHead, -1, [new("lm_head.weight", [V, H])], true, _c.TieWordEmbeddings ? WeightRole.Embedding : null),
        };
        for (int i = 0; i < _c.NumBlocks; i++)
        {
            string b = $"backbone.blocks.{i}.", m = b + "mlstm_layer.";
            Part P(string name, params long[] shape) => new(name, shape);
            rows.Add(new(WeightRole.NormMlstm, i, [P(b + "norm_mlstm.weight", H)], true));
            rows.Add(new(WeightRole.NormMlstmBias, i, [P(b + "norm_mlstm.bias", H)], bias));
            rows.Add(new(WeightRole.QkvoProj, i, concatenated
                ? [P(m + "qkv_opreact.weight", 2 * QK + 2 * DV, H)]
                : [P(m + "q.weight", QK, H), P(m + "k.weight", QK, H), P(m + "v.weight", DV, H), P(m + "ogate_preact.weight", DV, H)], true));
            rows.Add(new(WeightRole.QkvoProjBias, i, concatenated
                ? [P(m + "qkv_opreact.bias", 2 * QK + 2 * DV)]
                : [P(m + "q.bias", QK), P(m + "k.bias", QK), P(m + "v.bias", DV), P(m + "ogate_preact.bias", DV)], bias));
            rows.Add(new(WeightRole.IfGate, i, concatenated
                ? [P(m + "ifgate_preact.weight", 2 * NH, H)]
                : [P(m + "igate_preact.weight", NH, H), P(m + "fgate_preact.weight", NH, H)], true));
            rows.Add(new(WeightRole.IfGateBias, i, concatenated // the gate linears always have a bias
                ? [P(m + "ifgate_preact.bias", 2 * NH)]
                : [P(m + "igate_preact.bias", NH), P(m + "fgate_preact.bias", NH)], true));
            rows.Add(new(WeightRole.MultiheadNorm, i, [P(m + "multihead_norm.weight", DV)], true));
            rows.Add(new(WeightRole.MultiheadNormBias, i, [P(m + "multihead_norm.bias", DV)], bias));
            rows.Add(new(WeightRole.OutProj, i, [P(m + "out_proj.weight", H, DV)], true));
            rows.Add(new(WeightRole.OutProjBias, i, [P(m + "out_proj.bias", H)], bias));
            rows.Add(new(WeightRole.NormFfn, i, [P(b + "norm_ffn.weight", H)], true));
            rows.Add(new(WeightRole.NormFfnBias, i, [P(b + "norm_ffn.bias", H)], bias));
            rows.Add(new(WeightRole.FfnUpGateZ, i, concatenated
                ? [P(b + "ffn.proj_up_gate_z.weight", 2 * UP, H)]
                : [P(b + "ffn.proj_up_gate.weight", UP, H), P(b + "ffn.proj_up.weight", UP, H)], true));
            rows.Add(new(WeightRole.FfnUpGateZBias, i, concatenated
                ? [P(b + "ffn.proj_up_gate_z.bias", 2 * UP)]
                : [P(b + "ffn.proj_up_gate.bias", UP), P(b + "ffn.proj_up.bias", UP)], bias));
            rows.Add(new(WeightRole.FfnDown, i, [P(b + "ffn.proj_down.weight", H, UP)], true));
            rows.Add(new(WeightRole.FfnDownBias, i, [P(b + "ffn.proj_down.bias", H)], bias));
        }
        return rows;
    }

    /// <summary>
    /// Binds every present row to sources made by <paramref name="make"/> (one per checkpoint part; random weights,
    /// tests). A tied lm_head is the embedding.
    /// </summary>
    public BoundWeights Bind(Func<Row, Part, IWeightSource> make)
    {
        var bound = new Dictionary<(WeightRole, int), IWeightSource>();
        foreach (var row in Rows.Where(r => r.Present && r.TiedTo is null))
        {
            var parts = row.Parts.Select(part => make(row, part)).ToList();
            bound[(row.Role, row.Block)] = parts.Count == 1 ? parts[0] : new ConcatWeight(parts);
        }
        foreach (var row in Rows.Where(r => r.Present && r.TiedTo is not null)) bound[(row.Role, row.Block)] = bound[(row.TiedTo!.Value, row.Block)];
        return new BoundWeights(bound);
    }

    /// <summary>
    /// Finds every row's tensors in <paramref name="tensors"/>, checks shapes and dtypes, and refuses leftovers.
    /// <paramref name="source"/> names the checkpoint in errors.
    /// </summary>
    public BoundWeights Bind(IReadOnlyDictionary<string, TensorSlice> tensors, string source)
    {
        var used = new HashSet<string>(StringComparer.Ordinal);
        var bound = new Dictionary<(WeightRole, int), IWeightSource>();
        string mode = $"weight_mode \"{_c.WeightMode}\", use_bias {(_c.UseBias ? "true" : "false")}";
        foreach (var row in Rows)
        {
            if (!row.Present) continue;
            var parts = new List<IWeightSource>();
            bool tiedAndAbsent = false;
            foreach (var part in row.Parts)
            {
                if (!tensors.TryGetValue(part.Name, out var slice))
                {
                    if (row.TiedTo is not null) { tiedAndAbsent = true; break; } // tied lm_head may be left out of the file
                    throw new XLstmOnnxException(
                        $"{source}: missing tensor '{part.Name}' (expected shape {TensorSlice.FormatShape(part.Shape)} for {mode}).");
                }
                if (!slice.Shape.SequenceEqual(part.Shape))
                {
                    throw new XLstmOnnxException(
                        $"{source}: tensor '{part.Name}' has shape {TensorSlice.FormatShape(slice.Shape)}; config.json implies {TensorSlice.FormatShape(part.Shape)}.");
                }
                if (!slice.Dtype.IsWeightType())
                {
                    throw new XLstmOnnxException($"{source}: tensor '{part.Name}' has unsupported dtype {slice.Dtype}; expected F32, F16 or BF16.");
                }
                used.Add(part.Name);
                parts.Add(new CheckpointWeight(slice, part.Shape));
            }
            if (tiedAndAbsent) continue; // resolved below from the row it is tied to
            bound[(row.Role, row.Block)] = parts.Count == 1 ? parts[0] : new ConcatWeight(parts);
        }
        // Tied lm_head: transformers 5.17 declares no tied keys, so a lm_head.weight in the file is what it uses;
        // only a file without one falls back to the embedding (what tie_word_embeddings means).
        foreach (var row in Rows.Where(r => r.TiedTo is not null && !bound.ContainsKey((r.Role, r.Block))))
        {
            bound[(row.Role, row.Block)] = bound[(row.TiedTo!.Value, row.Block)];
        }
        var leftover = tensors.Keys.Where(k => !used.Contains(k)).Order(StringComparer.Ordinal).ToList();
        if (leftover.Count > 0)
        {
            throw new XLstmOnnxException(
                $"{source}: unexpected tensor '{leftover[0]}'{(leftover.Count > 1 ? $" (and {leftover.Count - 1} more)" : "")}: "
                + $"no such weight in an xLSTM with {mode}, num_blocks {_c.NumBlocks}, tie_word_embeddings {(_c.TieWordEmbeddings ? "true" : "false")}.");
        }
        return new BoundWeights(bound);
    }
}

/// <summary>The weights of one model by role, ready for the graph builder.</summary>
public sealed class BoundWeights(IReadOnlyDictionary<(WeightRole, int), IWeightSource> weights)
{
    /// <summary>A global weight (<paramref name="block"/> -1) or a block's; throws when the config has no such weight.</summary>
    public IWeightSource this[WeightRole role, int block = -1] =>
        weights.TryGetValue((role, block), out var w) ? w
        : throw new InvalidOperationException($"weight {role} of block {block} is not bound");

    /// <summary>An optional weight (biases), or null when the config has none.</summary>
    public IWeightSource? Optional(WeightRole role, int block = -1) => weights.GetValueOrDefault((role, block));

    /// <summary>
    /// The same weights, each read checked for NaN and ±Inf (<see cref="FiniteWeight"/>). A source bound to two roles (tied
    /// embeddings) stays one source: the graph stores it once because it is the same object.
    /// </summary>
    public BoundWeights CheckedFinite()
    {
        var wrapped = new Dictionary<IWeightSource, IWeightSource>(ReferenceEqualityComparer.Instance);
        return new(weights.ToDictionary(w => w.Key, w => wrapped.TryGetValue(w.Value, out var c) ? c : wrapped[w.Value] = FiniteWeight.Wrap(w.Value)));
    }
}
