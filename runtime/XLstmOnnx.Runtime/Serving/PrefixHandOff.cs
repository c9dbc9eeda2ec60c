using System.Runtime.InteropServices;
using XLstmOnnx.Contract;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Runtime.Serving;

/// <summary>
/// One prefix-cache entry on its way between replicas (docs/routing.md, "Handing a state over"), held as the
/// safetensors file that carries it: the tokens it holds the state after, the state (every layer's C, n, m, as float32),
/// and the logits and next token after its last token, with a format name and the model's signature in the metadata,
/// so that an entry is only ever imported into a model it fits. The state is read and written in place in the file's
/// bytes (<see cref="State"/>): a 7B state is 134 MB, and every host copy of it costs tens of milliseconds.
/// </summary>
public sealed class PrefixHandOff
{
    public const string Format = "xlstm-onnx-prefix";
    public const int FormatVersion = 1;

    private readonly (int Offset, int Length)[] _state; // each state tensor's float32 bytes within Bytes

    private PrefixHandOff(ModelManifest manifest, byte[] bytes, (int, int)[] state, int[] tokens, float[] logits, long next)
    {
        Manifest = manifest;
        Bytes = bytes;
        _state = state;
        Tokens = tokens;
        Logits = logits;
        Next = next;
    }

    internal ModelManifest Manifest { get; }
    /// <summary>The whole safetensors file (what the export endpoint sends).</summary>
    public byte[] Bytes { get; }
    /// <summary>The tokens whose state this is.</summary>
    public int[] Tokens { get; }
    internal float[] Logits { get; }
    internal long Next { get; }

    /// <summary>State tensor <paramref name="index"/> (past_state order), one row, in place in <see cref="Bytes"/>.</summary>
    internal ReadOnlySpan<float> State(int index) => MemoryMarshal.Cast<byte, float>(Bytes.AsSpan(_state[index].Offset, _state[index].Length));

    /// <summary>
    /// Builds the file of an entry of <paramref name="manifest"/>'s model: <paramref name="readState"/> fills each state
    /// tensor (index in past_state order, one row of float32) in place in the file's bytes.
    /// </summary>
    internal static PrefixHandOff Build(ModelManifest manifest, int[] tokens, Action<int, Span<float>> readState, float[] logits, long next)
    {
        int count = manifest.State.TensorCount;
        var entries = new List<SafetensorsWriter.Entry>();
        for (int i = 0; i < count; i++)
        {
            int index = i;
            long[] shape = StateSnapshot.TensorShape(manifest, i, 1);
            entries.Add(SafetensorsWriter.Filled(StateSnapshot.TensorName(i), SafetensorsDtype.F32, shape,
                shape.Aggregate(4L, (a, b) => a * b), bytes => readState(index, MemoryMarshal.Cast<byte, float>(bytes))));
        }
        entries.Add(SafetensorsWriter.I64("tokens", [tokens.Length], [.. tokens.Select(t => (long)t)]));
        entries.Add(SafetensorsWriter.F32("logits", [logits.Length], logits));
        entries.Add(SafetensorsWriter.I64("next_token", [1], [next]));
        var metadata = new Dictionary<string, string>
        {
            ["format"] = Format,
            ["format_version"] = FormatVersion.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["signature"] = StateSnapshot.Signature(manifest),
        };
        // this runs on the engine's loop: the file is not parsed back (its importer checks it)
        byte[] bytes = SafetensorsWriter.ToBytes(entries, metadata, out long[] offsets);
        var state = Enumerable.Range(0, count).Select(i => (checked((int)offsets[i]), checked((int)entries[i].ByteLength))).ToArray();
        return new PrefixHandOff(manifest, bytes, state, tokens, logits, next);
    }

    /// <summary>
    /// Reads an entry of <paramref name="manifest"/>'s model from a whole file in memory (a request body), not copying
    /// its state; throws naming <paramref name="name"/>, the field and both values on any mismatch.
    /// </summary>
    public static PrefixHandOff FromBytes(byte[] bytes, string name, ModelManifest manifest)
    {
        using var f = SafetensorsFile.FromBytes(bytes, name);
        StateSnapshot.CheckMetadata(f, name, manifest, Format, FormatVersion);
        var state = StateSnapshot.StateTensorSlices(f, name, manifest, 1).Select(t => (checked((int)t.FileOffset), checked((int)t.ByteLength))).ToArray();
        var tokens = f.Get("tokens");
        if (tokens.Dtype != SafetensorsDtype.I64 || tokens.Shape.Length != 1 || tokens.Shape[0] < 1)
            throw new XLstmOnnxException($"{name}: tensor 'tokens' is {tokens.Dtype}{TensorSlice.FormatShape(tokens.Shape)}; expected I64[n], n at least 1.");
        var ids = tokens.ToInt64();
        int bad = Array.FindIndex(ids, v => v < 0 || v >= manifest.VocabSize);
        if (bad >= 0) throw new XLstmOnnxException($"{name}: tensor 'tokens' holds {ids[bad]} at index {bad}; expected token ids in [0, {manifest.VocabSize}).");
        var logits = f.Get("logits");
        if (logits.Dtype != SafetensorsDtype.F32 || !logits.Shape.SequenceEqual(new[] { manifest.VocabSize }))
            throw new XLstmOnnxException($"{name}: tensor 'logits' is {logits.Dtype}{TensorSlice.FormatShape(logits.Shape)}; expected F32[{manifest.VocabSize}].");
        var next = f.Get("next_token");
        if (next.Dtype != SafetensorsDtype.I64 || !next.Shape.SequenceEqual(new[] { 1L }))
            throw new XLstmOnnxException($"{name}: tensor 'next_token' is {next.Dtype}{TensorSlice.FormatShape(next.Shape)}; expected I64[1].");
        return new PrefixHandOff(manifest, bytes, state, [.. ids.Select(v => (int)v)], logits.ToFloat32(), next.ToInt64()[0]);
    }
}
