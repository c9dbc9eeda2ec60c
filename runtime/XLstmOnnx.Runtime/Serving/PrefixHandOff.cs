using XLstmOnnx.Contract;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Runtime.Serving;

/// <summary>
/// One prefix-cache entry in host memory, to move between replicas (docs/routing.md, "Handing a state over"): the
/// tokens it holds the state after, the state (every layer's C, n, m, as float32), and the logits and next token after
/// its last token. Saved as safetensors with a format name and the model's signature, so that an entry is only ever
/// imported into a model it fits.
/// </summary>
public sealed class PrefixHandOff
{
    public const string Format = "xlstm-onnx-prefix";
    public const int FormatVersion = 1;

    internal PrefixHandOff(ModelManifest manifest, int[] tokens, float[][] state, float[] logits, long next)
    {
        Manifest = manifest;
        Tokens = tokens;
        State = state;
        Logits = logits;
        Next = next;
    }

    internal ModelManifest Manifest { get; }
    /// <summary>The tokens whose state this is.</summary>
    public int[] Tokens { get; }
    internal float[][] State { get; }
    internal float[] Logits { get; }
    internal long Next { get; }

    /// <summary>Writes the entry to <paramref name="path"/> (temporary file, then rename).</summary>
    public void Save(string path) => SafetensorsWriter.Write(path, Entries(), Metadata());

    /// <summary>The entry as a safetensors file in memory (what the hand-off endpoint sends; no disk on the way).</summary>
    public byte[] ToBytes() => SafetensorsWriter.ToBytes(Entries(), Metadata());

    private List<SafetensorsWriter.Entry> Entries()
    {
        var entries = new StateSnapshot(Manifest, 1, State, [null]).StateEntries();
        entries.Add(SafetensorsWriter.I64("tokens", [Tokens.Length], [.. Tokens.Select(t => (long)t)]));
        entries.Add(SafetensorsWriter.F32("logits", [Logits.Length], Logits));
        entries.Add(SafetensorsWriter.I64("next_token", [1], [Next]));
        return entries;
    }

    private Dictionary<string, string> Metadata() => new()
    {
        ["format"] = Format,
        ["format_version"] = FormatVersion.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["signature"] = StateSnapshot.Signature(Manifest),
    };

    /// <summary>Reads an entry for <paramref name="manifest"/>'s model; throws naming the file, the field and both values on any mismatch.</summary>
    public static PrefixHandOff Load(string path, ModelManifest manifest)
    {
        using var f = SafetensorsFile.Open(path);
        return Read(f, path, manifest);
    }

    /// <summary>
    /// Reads an entry held in memory (a request body), as <see cref="Load"/> reads a file; errors call it
    /// <paramref name="name"/>.
    /// </summary>
    public static PrefixHandOff FromBytes(byte[] bytes, string name, ModelManifest manifest)
    {
        using var f = SafetensorsFile.FromBytes(bytes, name);
        return Read(f, name, manifest);
    }

    private static PrefixHandOff Read(SafetensorsFile f, string path, ModelManifest manifest)
    {
        StateSnapshot.CheckMetadata(f, path, manifest, Format, FormatVersion);
        var state = StateSnapshot.ReadStateTensors(f, path, manifest, 1);
        var tokens = f.Get("tokens");
        if (tokens.Dtype != SafetensorsDtype.I64 || tokens.Shape.Length != 1 || tokens.Shape[0] < 1)
            throw new XLstmOnnxException($"{path}: tensor 'tokens' is {tokens.Dtype}{TensorSlice.FormatShape(tokens.Shape)}; expected I64[n], n at least 1.");
        var ids = tokens.ToInt64();
        int bad = Array.FindIndex(ids, v => v < 0 || v >= manifest.VocabSize);
        if (bad >= 0) throw new XLstmOnnxException($"{path}: tensor 'tokens' holds {ids[bad]} at index {bad}; expected token ids in [0, {manifest.VocabSize}).");
        var logits = f.Get("logits");
        if (logits.Dtype != SafetensorsDtype.F32 || !logits.Shape.SequenceEqual(new[] { manifest.VocabSize }))
            throw new XLstmOnnxException($"{path}: tensor 'logits' is {logits.Dtype}{TensorSlice.FormatShape(logits.Shape)}; expected F32[{manifest.VocabSize}].");
        var next = f.Get("next_token");
        if (next.Dtype != SafetensorsDtype.I64 || !next.Shape.SequenceEqual(new[] { 1L }))
            throw new XLstmOnnxException($"{path}: tensor 'next_token' is {next.Dtype}{TensorSlice.FormatShape(next.Shape)}; expected I64[1].");
        return new PrefixHandOff(manifest, [.. ids.Select(v => (int)v)], state, logits.ToFloat32(), next.ToInt64()[0]);
    }
}
