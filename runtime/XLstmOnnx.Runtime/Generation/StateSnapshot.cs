using XLstmOnnx.Contract;
using XLstmOnnx.Contract.Safetensors;

namespace XLstmOnnx.Runtime.Generation;

/// <summary>
/// A copy of a generator's recurrent state (every layer's C, n, m) in host memory, plus the tokens it has read but
/// not yet fed (the last sampled token of each row). Saved as safetensors with a format version and the model's
/// state dims, so that a state is only ever loaded into a model it fits.
/// </summary>
public sealed class StateSnapshot
{
    public const string Format = "xlstm-onnx-state";
    public const int FormatVersion = 1;

    internal StateSnapshot(ModelManifest manifest, int batch, float[][] tensors, int[]?[] pending)
    {
        Manifest = manifest;
        Batch = batch;
        Tensors = tensors;
        Pending = pending;
    }

    internal ModelManifest Manifest { get; }
    public int Batch { get; }
    /// <summary>Layer-major, as <see cref="StateLayout.Index"/>.</summary>
    internal float[][] Tensors { get; }
    /// <summary>Per row: a sampled token not yet fed to the state, or null.</summary>
    internal int[]?[] Pending { get; }

    /// <summary>Writes the snapshot to <paramref name="path"/> (temporary file, then rename).</summary>
    public void Save(string path)
    {
        var entries = Tensors.Select((t, i) => SafetensorsWriter.F32(TensorName(i), TensorShape(Manifest, i, Batch), t)).ToList();
        long[] pending = Pending.Select(p => p is { Length: > 0 } ? (long)p[0] : -1L).ToArray();
        entries.Add(SafetensorsWriter.I64("pending", [Batch], pending));
        SafetensorsWriter.Write(path, entries, new Dictionary<string, string>
        {
            ["format"] = Format,
            ["format_version"] = FormatVersion.ToString(),
            ["signature"] = Signature(Manifest),
        });
    }

    /// <summary>Reads a snapshot for <paramref name="manifest"/>'s model; throws naming the file and both values on any mismatch.</summary>
    public static StateSnapshot Load(string path, ModelManifest manifest)
    {
        using var f = SafetensorsFile.Open(path);
        CheckMetadata(f, path, manifest, Format, FormatVersion);
        var pendingSlice = f.Get("pending");
        if (pendingSlice.Shape.Length != 1 || pendingSlice.Shape[0] is < 1 or > int.MaxValue)
        {
            throw new XLstmOnnxException($"{path}: tensor 'pending' has shape {TensorSlice.FormatShape(pendingSlice.Shape)}; expected [batch], batch at least 1.");
        }
        int batch = (int)pendingSlice.Shape[0];
        var tensors = ReadStateTensors(f, path, manifest, batch);
        if (pendingSlice.Dtype != SafetensorsDtype.I64)
        {
            throw new XLstmOnnxException($"{path}: tensor 'pending' is {pendingSlice.Dtype}{TensorSlice.FormatShape(pendingSlice.Shape)}; expected I64[{batch}].");
        }
        var pendingIds = pendingSlice.ToInt64();
        for (int row = 0; row < pendingIds.Length; row++)
        {
            long v = pendingIds[row];
            if (v < -1 || v >= manifest.VocabSize)
            {
                throw new XLstmOnnxException($"{path}: tensor 'pending' row {row} is {v}; expected -1 (none) or a token id in [0, {manifest.VocabSize}).");
            }
        }
        var pending = pendingIds.Select(v => v >= 0 ? new[] { (int)v } : null).ToArray();
        return new StateSnapshot(manifest, batch, tensors, pending);
    }

    /// <summary>
    /// Checks a state file's metadata: its format name and version, and that its model signature is
    /// <paramref name="manifest"/>'s; errors name <paramref name="path"/>, the field and both values.
    /// </summary>
    internal static void CheckMetadata(SafetensorsFile f, string path, ModelManifest manifest, string format, int version)
    {
        string Meta(string key) => f.Metadata.TryGetValue(key, out var v) ? v : "(missing)";
        if (Meta("format") != format) throw new XLstmOnnxException($"{path}: metadata 'format' is {Meta("format")}; expected {format}.");
        if (Meta("format_version") != version.ToString(System.Globalization.CultureInfo.InvariantCulture))
        {
            throw new XLstmOnnxException($"{path}: metadata 'format_version' is {Meta("format_version")}; this version reads {version}.");
        }
        if (Meta("signature") != Signature(manifest))
        {
            throw new XLstmOnnxException($"{path}: the state is for a model with {Meta("signature")}; this model has {Signature(manifest)}.");
        }
    }

    /// <summary>
    /// The state tensors of <paramref name="batch"/> rows from an open file, checked against <paramref name="manifest"/>'s
    /// shapes (float32) and for finite values; errors name <paramref name="path"/>, the tensor and both values.
    /// </summary>
    internal static float[][] ReadStateTensors(SafetensorsFile f, string path, ModelManifest manifest, int batch) =>
        [.. StateTensorSlices(f, path, manifest, batch).Select(t => t.ToFloat32())];

    /// <summary>The state tensors as <see cref="ReadStateTensors"/> checks them, in past_state order, read in place (no copies).</summary>
    internal static TensorSlice[] StateTensorSlices(SafetensorsFile f, string path, ModelManifest manifest, int batch)
    {
        var layout = manifest.State;
        var tensors = new TensorSlice[layout.TensorCount];
        for (int l = 0; l < layout.Layers; l++)
        {
            foreach (var part in StateLayout.Parts)
            {
                var t = f.Get(TensorName(l, part));
                var expected = layout.Shape(part, batch);
                if (!t.Shape.SequenceEqual(expected) || t.Dtype != SafetensorsDtype.F32)
                {
                    throw new XLstmOnnxException($"{path}: tensor '{t.Name}' is {t.Dtype}{TensorSlice.FormatShape(t.Shape)}; expected F32{TensorSlice.FormatShape(expected)}.");
                }
                var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.RawBytes);
                // a NaN or an infinity in the state makes every later logit NaN: refuse it here, by name
                if (!Sampler.AllFinite(values))
                {
                    int at = 0;
                    while (float.IsFinite(values[at])) at++;
                    throw new XLstmOnnxException($"{path}: tensor '{t.Name}' holds {values[at].ToString(System.Globalization.CultureInfo.InvariantCulture)} at flat index {at}; "
                        + "a state must be finite (it was not saved from a working model, or the file was altered).");
                }
                tensors[layout.Index(l, part)] = t;
            }
        }
        return tensors;
    }

    /// <summary>The file's name of state tensor <paramref name="index"/> (past_state order).</summary>
    internal static string TensorName(int index) => TensorName(StateLayout.LayerOf(index), StateLayout.PartOf(index));

    /// <summary>The shape of state tensor <paramref name="index"/> for <paramref name="batch"/> rows.</summary>
    internal static long[] TensorShape(ModelManifest manifest, int index, int batch) => manifest.State.Shape(StateLayout.PartOf(index), batch);

    /// <summary>The file's name of layer <paramref name="layer"/>'s <paramref name="part"/>: state.L.C, state.L.n, state.L.m.</summary>
    private static string TensorName(int layer, StatePart part) => $"state.{layer}.{StateLayout.Name(part)}";

    internal static string Signature(ModelManifest m) =>
        $"layers={m.NumLayers} heads={m.NumHeads} dqk={m.QkHeadDim} dv={m.VHeadDim} hidden={m.HiddenSize} vocab={m.VocabSize}";
}
