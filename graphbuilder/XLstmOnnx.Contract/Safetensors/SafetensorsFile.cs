using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Text.Json;

namespace XLstmOnnx.Contract.Safetensors;

/// <summary>
/// One safetensors file: an 8-byte little-endian header length, a JSON header, then the tensor bytes. The body is
/// memory-mapped (or, from <see cref="FromBytes"/>, an array pinned in memory) and read in place; nothing is copied
/// until a caller asks for a tensor's values. Owns the mapping or the pin.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>Headers larger than this are refused (the safetensors reference implementation uses 100 MB).</summary>
    private const long MaxHeaderBytes = 100_000_000;

    private MemoryMappedFile? _map;
    private MemoryMappedViewAccessor? _view;
    private byte* _base;
    private readonly long _dataStart;
    private readonly Dictionary<string, TensorSlice> _tensors = new(StringComparer.Ordinal);
    private bool _pointerAcquired;
    private System.Runtime.InteropServices.GCHandle _pin;
    private bool _disposed;

    /// <summary>The file's path, as given.</summary>
    public string Path { get; }

    /// <summary>Where the data section starts: 8 bytes of header length, then the header.</summary>
    public long DataStart => _dataStart;

    /// <summary>The header's <c>__metadata__</c> strings (may be empty).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Tensors in header order.</summary>
    public IReadOnlyCollection<TensorSlice> Tensors
    {
        get
        {
            ThrowIfDisposed();
            return _tensors.Values;
        }
    }

    private SafetensorsFile(string name, byte[] bytes)
    {
        Path = name;
        _pin = System.Runtime.InteropServices.GCHandle.Alloc(bytes, System.Runtime.InteropServices.GCHandleType.Pinned);
        _base = (byte*)_pin.AddrOfPinnedObject();
        Metadata = ReadHeader(bytes.LongLength, out _dataStart);
    }

    private SafetensorsFile(string path)
    {
        Path = path;
        if (string.IsNullOrWhiteSpace(path) || path.Contains('\0')) throw new XLstmOnnxException($"\"{path}\": not a safetensors file path.");
        var info = new FileInfo(path);
        if (!info.Exists) throw new XLstmOnnxException($"{path}: safetensors file not found.");
        long length = info.Length;
        if (length > 8) // an empty map of a 0-byte region is not allowed; 8-byte files have no header anyway
        {
            try
            {
                _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new XLstmOnnxException($"{path}: cannot read the safetensors file ({e.Message}).", e);
            }
            _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            _pointerAcquired = true;
            _base = p + _view.PointerOffset;
        }
        Metadata = ReadHeader(length, out _dataStart);
    }

    /// <summary>Checks the header length field and parses the header of the <paramref name="length"/> bytes at <see cref="_base"/>; disposes this on failure.</summary>
    private Dictionary<string, string> ReadHeader(long length, out long dataStart)
    {
        string path = Path;
        try
        {
            if (length < 8)
            {
                throw new XLstmOnnxException($"{path}: truncated safetensors file: {length} bytes, expected at least 8 (the header length).");
            }
            ulong headerLen = length > 8 ? BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(_base, 8)) : 0;
            if (headerLen == 0 || headerLen > MaxHeaderBytes || (long)headerLen > length - 8)
            {
                throw new XLstmOnnxException(
                    $"{path}: truncated or corrupt safetensors file: the header length field says {headerLen} bytes, "
                    + $"but the file has {length - 8} bytes after it (and headers are at most {MaxHeaderBytes}).");
            }
            dataStart = 8 + (long)headerLen;
            long dataLength = length - dataStart;
            var header = new ReadOnlySpan<byte>(_base + 8, (int)headerLen);
            try
            {
                return ParseHeader(header, dataLength);
            }
            catch (InvalidOperationException e) // a JSON string that cannot be decoded (a lone surrogate, "\ud800")
            {
                throw new XLstmOnnxException($"{path}: the safetensors header is not valid JSON ({e.Message}).", e);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads and validates a whole safetensors file held in <paramref name="bytes"/> (pinned until disposed; not copied);
    /// errors name it <paramref name="name"/>. The caller disposes the result.
    /// </summary>
    public static SafetensorsFile FromBytes(byte[] bytes, string name)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        return new SafetensorsFile(name, bytes);
    }

    /// <summary>Opens and validates <paramref name="path"/>; the caller disposes the result.</summary>
    public static SafetensorsFile Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        return new SafetensorsFile(path);
    }

    /// <summary>The tensor called <paramref name="name"/>, or null.</summary>
    public TensorSlice? Find(string name)
    {
        ThrowIfDisposed();
        return _tensors.GetValueOrDefault(name);
    }

    /// <summary>The tensor called <paramref name="name"/>; throws naming the file when it is absent.</summary>
    public TensorSlice Get(string name) =>
        Find(name) ?? throw new XLstmOnnxException($"{Path}: no tensor named '{name}'.");

    /// <summary>
    /// Reads the header as the safetensors library does (safetensors/src/tensor.rs, <c>Metadata::validate</c>): UTF-8 JSON
    /// starting with '{', string metadata, each tensor once, and the tensors' byte ranges, sorted by offset, tiling the data
    /// section exactly: no overlap (two tensors sharing bytes), no gap, nothing after the last. Anything else is refused,
    /// naming the file and the tensor.
    /// </summary>
    private Dictionary<string, string> ParseHeader(ReadOnlySpan<byte> header, long dataLength)
    {
        var metadata = new Dictionary<string, string>();
        string text;
        try
        {
            text = new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true).GetString(header);
        }
        catch (System.Text.DecoderFallbackException e)
        {
            throw new XLstmOnnxException($"{Path}: the safetensors header is not valid UTF-8 ({e.Message}).", e);
        }
        if (!text.StartsWith('{')) throw new XLstmOnnxException($"{Path}: the safetensors header must start with '{{'; found {Quote(text)}.");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(text);
        }
        catch (JsonException e)
        {
            throw new XLstmOnnxException($"{Path}: the safetensors header is not valid JSON ({e.Message}).", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new XLstmOnnxException($"{Path}: the safetensors header must be a JSON object; found {doc.RootElement.ValueKind}.");
            }
            bool seenMetadata = false;
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (seenMetadata) throw new XLstmOnnxException($"{Path}: the safetensors header has '__metadata__' twice.");
                    seenMetadata = true;
                    if (prop.Value.ValueKind != JsonValueKind.Object)
                    {
                        throw new XLstmOnnxException($"{Path}: the safetensors header's '__metadata__' must be an object of strings; found {prop.Value.ValueKind}.");
                    }
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String)
                        {
                            throw new XLstmOnnxException($"{Path}: metadata '{m.Name}' must be a string; found {m.Value.ValueKind}.");
                        }
                        metadata[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                if (_tensors.ContainsKey(prop.Name)) throw new XLstmOnnxException($"{Path}: tensor '{prop.Name}' appears twice in the safetensors header.");
                _tensors[prop.Name] = ParseEntry(prop.Name, prop.Value, dataLength);
            }
        }
        CheckTiling(dataLength);
        return metadata;
    }

    /// <summary>The tensors' byte ranges, in offset order, must cover [0, dataLength) once each (the safetensors rule).</summary>
    private void CheckTiling(long dataLength)
    {
        long covered = 0;
        TensorSlice? previous = null;
        foreach (var t in _tensors.Values.OrderBy(t => t.Offset).ThenBy(t => t.ByteLength))
        {
            if (t.Offset < covered)
            {
                throw new XLstmOnnxException($"{Path}: tensor '{t.Name}' (bytes [{t.Offset}, {t.Offset + t.ByteLength})) overlaps tensor '{previous!.Name}' "
                    + $"(bytes [{previous.Offset}, {previous.Offset + previous.ByteLength})); safetensors tensors must not share data.");
            }
            if (t.Offset > covered)
            {
                throw new XLstmOnnxException($"{Path}: tensor '{t.Name}' starts at byte {t.Offset} of the data section, but the tensors before it end at {covered}; "
                    + "safetensors tensors must follow each other without gaps.");
            }
            covered = t.Offset + t.ByteLength;
            previous = t;
        }
        if (covered != dataLength)
        {
            throw new XLstmOnnxException($"{Path}: the tensors cover {covered} bytes of the data section, which has {dataLength}; "
                + "a safetensors file holds exactly its tensors' bytes (truncated, or bytes after the last tensor).");
        }
    }

    private static string Quote(string text) => System.Text.Json.Nodes.JsonValue.Create(text.Length > 40 ? text[..40] + "..." : text).ToJsonString();

    private TensorSlice ParseEntry(string name, JsonElement e, long dataLength)
    {
        XLstmOnnxException Bad(string what) => new($"{Path}: tensor '{name}': {what}.");
        if (e.ValueKind != JsonValueKind.Object) throw Bad($"header entry must be an object; found {e.ValueKind}");
        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String) throw Bad("header entry has no string 'dtype'");
        string dtypeName = dt.GetString()!;
        if (!SafetensorsDtypes.TryParse(dtypeName, out var dtype))
        {
            throw Bad($"unsupported dtype \"{dtypeName}\"; expected one of {string.Join(", ", Enum.GetNames<SafetensorsDtype>())}");
        }
        if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array) throw Bad("header entry has no 'shape' array");
        var shape = new long[sh.GetArrayLength()];
        int i = 0;
        long count = 1;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long v) || v < 0) throw Bad($"shape entry {d.GetRawText()} is not a non-negative integer");
            shape[i++] = v;
            // no tensor of a file up to 2^63 bytes has more elements than that
            if (v != 0 && count > long.MaxValue / 16 / v) throw Bad($"shape {Format(sh)} has more elements than any file can hold");
            count *= v;
        }
        if (!e.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
        {
            throw Bad("header entry has no 'data_offsets' pair");
        }
        if (off[0].ValueKind != JsonValueKind.Number || off[1].ValueKind != JsonValueKind.Number
            || !off[0].TryGetInt64(out long begin) || !off[1].TryGetInt64(out long end) || begin < 0 || end < begin)
        {
            throw Bad($"data_offsets {off.GetRawText()} must be two integers 0 <= begin <= end");
        }
        if (end > dataLength)
        {
            throw Bad($"data_offsets [{begin}, {end}] lie outside the data section of {dataLength} bytes (file truncated?)");
        }
        long expected = count * dtype.Size();
        if (end - begin != expected)
        {
            throw Bad($"data_offsets span {end - begin} bytes, but shape [{string.Join(", ", shape)}] of {dtypeName} needs {expected}");
        }
        return new TensorSlice(this, name, dtype, shape, begin, end - begin);
    }

    private static string Format(JsonElement shape)
    {
        string raw = shape.GetRawText();
        return raw.Length > 60 ? raw[..60] + "...]" : raw;
    }

    /// <summary>The bytes of a tensor, in place (valid while this file is open).</summary>
    internal ReadOnlySpan<byte> Bytes(long offset, int length)
    {
        ThrowIfDisposed();
        return new ReadOnlySpan<byte>(_base + _dataStart + offset, length);
    }

    private void ThrowIfDisposed()
    {
        if (_disposed) throw new ObjectDisposedException(Path, $"{Path}: the safetensors file was closed; its tensors can no longer be read.");
    }

    /// <summary>Unmaps the file. Later reads of it or of its <see cref="TensorSlice"/>s throw <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_pointerAcquired)
        {
            _view!.SafeMemoryMappedViewHandle.ReleasePointer();
            _pointerAcquired = false;
        }
        _base = null;
        if (_pin.IsAllocated) _pin.Free();
        _view?.Dispose();
        _view = null;
        _map?.Dispose();
        _map = null;
    }
}
