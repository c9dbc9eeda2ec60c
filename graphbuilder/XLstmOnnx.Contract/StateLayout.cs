using System.Globalization;

namespace XLstmOnnx.Contract;

/// <summary>The three recurrent state tensors of a layer, in their order within the layer.</summary>
public enum StatePart
{
    /// <summary>The matrix memory C [B, NH, DQK, DV].</summary>
    C,
    /// <summary>The normalizer n [B, NH, DQK].</summary>
    N,
    /// <summary>The stabilizer m [B, NH, 1].</summary>
    M,
}

/// <summary>
/// The recurrent state of an exported model, in one place: its tensors' names, shapes and order. Per layer L the graph
/// reads <c>past_state.L.{C,n,m}</c> and writes <c>present_state.L.{C,n,m}</c>, float32 (C and n bfloat16 with
/// <see cref="StateDtype.Bf16"/>)
/// (docs/exported-graph.md, "State"). Where the state is a flat list of tensors (bindings, pools, snapshots) it is
/// layer-major: tensor <see cref="Index"/>(L, part) = L · 3 + part.
/// </summary>
/// <param name="Layers">Layers (blocks), each with one C, n and m.</param>
/// <param name="Heads">NH.</param>
/// <param name="QkHeadDim">DQK.</param>
/// <param name="VHeadDim">DV.</param>
public readonly record struct StateLayout(int Layers, long Heads, long QkHeadDim, long VHeadDim)
{
    /// <summary>State tensors per layer.</summary>
    public const int PartsPerLayer = 3;

    /// <summary>The parts of a layer, in order.</summary>
    public static IReadOnlyList<StatePart> Parts { get; } = [StatePart.C, StatePart.N, StatePart.M];

    /// <summary>State tensors in all: <see cref="Layers"/> · 3.</summary>
    public int TensorCount => Layers * PartsPerLayer;

    /// <summary>The position of layer <paramref name="layer"/>'s <paramref name="part"/> in the layer-major list.</summary>
    public int Index(int layer, StatePart part)
    {
        if ((uint)layer >= (uint)Layers) throw new ArgumentOutOfRangeException(nameof(layer), layer, $"expected a layer in [0, {Layers})");
        return layer * PartsPerLayer + (int)CheckPart(part);
    }

    /// <summary>The layer of tensor <paramref name="index"/> of the layer-major list.</summary>
    public static int LayerOf(int index) => index / PartsPerLayer;

    /// <summary>The part of tensor <paramref name="index"/> of the layer-major list.</summary>
    public static StatePart PartOf(int index) => (StatePart)(index % PartsPerLayer);

    /// <summary>The part's name in tensor names: "C", "n" or "m".</summary>
    public static string Name(StatePart part) => CheckPart(part) switch
    {
        StatePart.C => "C",
        StatePart.N => "n",
        _ => "m",
    };

    /// <summary>The graph input <c>past_state.{layer}.{part}</c>.</summary>
    public static string PastName(int layer, StatePart part) => $"past_state.{Layer(layer)}.{Name(part)}";

    /// <summary>The graph output <c>present_state.{layer}.{part}</c>.</summary>
    public static string PresentName(int layer, StatePart part) => $"present_state.{Layer(layer)}.{Name(part)}";

    /// <summary>Every graph state input, in the layer-major order.</summary>
    public string[] PastNames() => Names(PastName);

    /// <summary>Every graph state output, in the layer-major order (the same order as <see cref="PastNames"/>).</summary>
    public string[] PresentNames() => Names(PresentName);

    /// <summary>A part's dims without the batch axis: C [NH, DQK, DV], n [NH, DQK], m [NH, 1].</summary>
    public long[] RowShape(StatePart part) => CheckPart(part) switch
    {
        StatePart.C => [Heads, QkHeadDim, VHeadDim],
        StatePart.N => [Heads, QkHeadDim],
        _ => [Heads, 1],
    };

    /// <summary>A part's shape for <paramref name="batch"/> rows: [batch, ..<see cref="RowShape"/>].</summary>
    public long[] Shape(StatePart part, long batch) => [batch, .. RowShape(part)];

    /// <summary>Values of one row of a part.</summary>
    public long RowElements(StatePart part) => RowShape(part).Aggregate(1L, (a, b) => a * b);

    /// <summary>Values of a part for <paramref name="batch"/> rows.</summary>
    public long Elements(StatePart part, long batch) => batch * RowElements(part);

    /// <summary>Bytes of one row's whole state: every layer's C, n and m, float32.</summary>
    public long RowBytes => RowBytesAs(StateDtype.Float32);

    /// <summary>Bytes of one row's whole state stored as <paramref name="dtype"/> (m float32 always).</summary>
    public long RowBytesAs(StateDtype dtype)
    {
        var layout = this;
        return Parts.Sum(p => layout.RowElements(p) * ElementBytes(p, dtype)) * Layers;
    }

    /// <summary>Whether <paramref name="part"/> is stored as bfloat16 under <paramref name="dtype"/>: C and n with bf16 state; m never.</summary>
    public static bool IsBf16(StatePart part, StateDtype dtype) => dtype == StateDtype.Bf16 && CheckPart(part) != StatePart.M;

    /// <summary>Bytes of one value of <paramref name="part"/> under <paramref name="dtype"/>: 2 for bfloat16, else 4.</summary>
    public static int ElementBytes(StatePart part, StateDtype dtype) => IsBf16(part, dtype) ? 2 : sizeof(float);

    private string[] Names(Func<int, StatePart, string> name)
    {
        var names = new string[TensorCount];
        for (int l = 0; l < Layers; l++)
        {
            foreach (var part in Parts) names[Index(l, part)] = name(l, part);
        }
        return names;
    }

    private static string Layer(int layer) => layer.ToString(CultureInfo.InvariantCulture);

    private static StatePart CheckPart(StatePart part) =>
        (uint)part < PartsPerLayer ? part : throw new ArgumentOutOfRangeException(nameof(part), part, "expected C, N or M");
}
