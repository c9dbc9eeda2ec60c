using XLstmOnnx.GraphBuilder.Export;

namespace XLstmOnnx.Runtime;

/// <summary>
/// The recurrent state of every layer (C, n, m) for a batch, in host memory, float32. Zeros mean "start"
/// (m₀ = 0, as HF's cache). <see cref="XLstmSession.Run"/> replaces its tensors with the present state.
/// </summary>
public sealed class RecurrentState
{
    private readonly float[][] _tensors; // layer-major: [layer * 3 + part]

    internal RecurrentState(ModelManifest manifest, int batch)
    {
        Manifest = manifest;
        Batch = batch;
        _tensors = new float[manifest.NumLayers * 3][];
        Reset();
    }

    public ModelManifest Manifest { get; }
    public int Batch { get; }

    /// <summary>The state tensor of <paramref name="layer"/>, part "C", "n" or "m", in row-major order.</summary>
    public float[] this[int layer, string part] => _tensors[Index(layer, part)];

    /// <summary>Tensor <paramref name="i"/> in past_state order (layer i / 3, part i % 3).</summary>
    internal float[] this[int i] => _tensors[i];

    internal void Set(int i, float[] values) => _tensors[i] = values;

    /// <summary>Back to zeros.</summary>
    public void Reset()
    {
        for (int l = 0; l < Manifest.NumLayers; l++)
        {
            foreach (var part in GraphBuilder.Architecture.StateNames.Parts)
            {
                long n = Manifest.StateShape(part, Batch).Aggregate(1L, (a, b) => a * b);
                _tensors[Index(l, part)] = new float[n];
            }
        }
    }

    private static int Index(int layer, string part) => layer * 3 + part switch
    {
        "C" => 0,
        "n" => 1,
        "m" => 2,
        _ => throw new ArgumentOutOfRangeException(nameof(part), part, "expected C, n or m"),
    };
}
