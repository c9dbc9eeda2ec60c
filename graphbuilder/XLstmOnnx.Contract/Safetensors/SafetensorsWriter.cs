using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace XLstmOnnx.Contract.Safetensors;

/// <summary>Writes safetensors files (used for random checkpoints, saved states and tests).</summary>
public static class SafetensorsWriter
{
    /// <summary>
    /// One tensor to write: its name, dtype, shape and raw little-endian bytes (<see cref="WriteBytes"/> writes them to a
    /// stream; <see cref="Fill"/>, when set, writes them in place into the bytes of a file built in memory).
    /// </summary>
    public sealed record Entry(string Name, SafetensorsDtype Dtype, long[] Shape, Action<Stream> WriteBytes, long ByteLength)
    {
        public SpanAction? Fill { get; init; }
    }

    /// <summary>Writes a tensor's bytes into the span it is given (exactly its length).</summary>
    public delegate void SpanAction(Span<byte> bytes);

    /// <summary>
    /// An entry whose bytes <paramref name="fill"/> writes in place (a device copy straight into the file's bytes, in
    /// <see cref="ToBytes"/>); to a stream it goes through a buffer of its size.
    /// </summary>
    public static Entry Filled(string name, SafetensorsDtype dtype, long[] shape, long byteLength, SpanAction fill) =>
        new(name, dtype, shape, s =>
        {
            var buffer = new byte[byteLength];
            fill(buffer);
            s.Write(buffer);
        }, byteLength) { Fill = fill };

    /// <summary>An entry for float32 values.</summary>
    public static Entry F32(string name, long[] shape, float[] values) =>
        new(name, SafetensorsDtype.F32, shape, s => s.Write(MemoryMarshal.AsBytes(values.AsSpan())), values.LongLength * 4);

    /// <summary>An entry for int64 values.</summary>
    public static Entry I64(string name, long[] shape, long[] values) =>
        new(name, SafetensorsDtype.I64, shape, s => s.Write(MemoryMarshal.AsBytes(values.AsSpan())), values.LongLength * 8);

    /// <summary>
    /// Checks that <paramref name="path"/> can be written: not a folder, in a folder that exists and takes a new file.
    /// Throws naming the path; a command that writes at its end calls it first, before the work.
    /// </summary>
    public static void CheckTarget(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (string.IsNullOrWhiteSpace(path)) throw new XLstmOnnxException("the file path is empty; expected a file to write.");
        if (Directory.Exists(path)) throw new XLstmOnnxException($"{path}: is a folder; expected the path of a file to write.");
        string full;
        try
        {
            full = System.IO.Path.GetFullPath(path);
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new XLstmOnnxException($"{path}: not a usable file path ({e.Message}).", e);
        }
        string folder = System.IO.Path.GetDirectoryName(full)!;
        if (!Directory.Exists(folder)) throw new XLstmOnnxException($"{path}: folder {folder} does not exist; create it first.");
        string probe = System.IO.Path.Combine(folder, $".{System.IO.Path.GetFileName(full)}.probe-{Guid.NewGuid():N}");
        try
        {
            using (File.Create(probe)) { }
            File.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new XLstmOnnxException($"{path}: cannot write the file ({e.Message}).", e);
        }
    }

    /// <summary>Writes <paramref name="entries"/> to <paramref name="path"/> through a temporary file and a rename; throws naming the path when it cannot.</summary>
    public static void Write(string path, IReadOnlyList<Entry> entries, IReadOnlyDictionary<string, string>? metadata = null)
    {
        CheckTarget(path);
        string tmp = path + $".tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20)) WriteTo(fs, entries, metadata);
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new XLstmOnnxException($"{path}: cannot write the file ({e.Message}).", e);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }

    /// <summary>
    /// The whole file in memory, for sending it without touching a disk (a state handed between replicas): one array of
    /// exactly the file's length, and where each entry's bytes start in it (<paramref name="offsets"/>, in entry order).
    /// An entry with <see cref="Entry.Fill"/> writes its bytes in place.
    /// </summary>
    public static byte[] ToBytes(IReadOnlyList<Entry> entries, IReadOnlyDictionary<string, string>? metadata, out long[] offsets)
    {
        byte[] json = Header(entries, metadata);
        long length = 8 + Padded(json) + entries.Sum(e => e.ByteLength);
        if (length > Array.MaxLength) throw new XLstmOnnxException($"a safetensors file of {length} bytes does not fit in one array (at most {Array.MaxLength} bytes).");
        var bytes = new byte[length];
        using (var head = new MemoryStream(bytes, writable: true)) WriteHeader(head, json);
        offsets = new long[entries.Count];
        long at = 8 + Padded(json);
        for (int i = 0; i < entries.Count; i++)
        {
            var e = entries[i];
            offsets[i] = at;
            if (e.Fill is { } fill)
            {
                fill(bytes.AsSpan(checked((int)at), checked((int)e.ByteLength)));
            }
            else
            {
                using var slot = new MemoryStream(bytes, checked((int)at), checked((int)e.ByteLength), writable: true);
                WriteEntry(slot, e);
            }
            at += e.ByteLength;
        }
        return bytes;
    }

    private static void WriteTo(Stream stream, IReadOnlyList<Entry> entries, IReadOnlyDictionary<string, string>? metadata)
    {
        WriteHeader(stream, Header(entries, metadata));
        foreach (var e in entries) WriteEntry(stream, e);
    }

    /// <summary>The 8-byte header length, the JSON header and its padding.</summary>
    private static void WriteHeader(Stream stream, byte[] json)
    {
        int padded = Padded(json);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded);
        stream.Write(len);
        stream.Write(json);
        for (int i = json.Length; i < padded; i++) stream.WriteByte((byte)' ');
    }

    private static void WriteEntry(Stream stream, Entry e)
    {
        long before = stream.Position;
        e.WriteBytes(stream);
        if (stream.Position - before != e.ByteLength)
        {
            throw new InvalidOperationException($"tensor '{e.Name}' wrote {stream.Position - before} bytes, declared {e.ByteLength}");
        }
    }

    private static int Padded(byte[] json) => (json.Length + 7) / 8 * 8; // the data section starts 8-byte aligned

    /// <summary>The JSON header: <c>__metadata__</c> (when given), then each tensor's dtype, shape and data_offsets.</summary>
    private static byte[] Header(IReadOnlyList<Entry> entries, IReadOnlyDictionary<string, string>? metadata)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (key, value) in metadata) w.WriteString(key, value);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var e in entries)
            {
                w.WriteStartObject(e.Name);
                w.WriteString("dtype", e.Dtype.ToString());
                w.WriteStartArray("shape");
                foreach (long d in e.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + e.ByteLength);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += e.ByteLength;
            }
            w.WriteEndObject();
        }
        return buffer.ToArray();
    }
}
