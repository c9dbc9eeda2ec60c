using XLstmOnnx.Contract;

namespace XLstmOnnx.Runtime;

/// <summary>
/// The recurrent state of every layer (C, n, m) for a batch, in host memory, float32. Zeros mean "start"
/// (m₀ = 0, as HF's cache). <see cref="XLstmSession.Run"/> replaces its tensors with the present state.
/// </summary>
public sealed class RecurrentState
{
    private readonly float[][] _tensors; // layer-major, as StateLayout.Index

    internal RecurrentState(ModelManifest manifest, int batch)
    {
        Manifest = manifest;
        Batch = batch;
        _tensors = new float[manifest.State.TensorCount][];
        Reset();
    }

    public ModelManifest Manifest { get; }
    public int Batch { get; }

    /// <summary>The state tensor of <paramref name="layer"/>'s <paramref name="part"/>, in row-major order.</summary>
    public float[] this[int layer, StatePart part] => _tensors[Manifest.State.Index(layer, part)];

    /// <summary>Tensor <paramref name="i"/> in past_state order (<see cref="StateLayout"/>'s layer-major list).</summary>
    internal float[] this[int i] => _tensors[i];

    internal void Set(int i, float[] values) => _tensors[i] = values;

    /// <summary>Back to zeros.</summary>
    public void Reset()
    {
        var layout = Manifest.State;
        for (int i = 0; i < _tensors.Length; i++) _tensors[i] = new float[layout.Elements(StateLayout.PartOf(i), Batch)];
    }
}
