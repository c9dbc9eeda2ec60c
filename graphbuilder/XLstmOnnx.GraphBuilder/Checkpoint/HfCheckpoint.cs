using System.Text.Json;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Config;

namespace XLstmOnnx.GraphBuilder.Checkpoint;

/// <summary>
/// An HF checkpoint folder: config.json plus model.safetensors, or shards listed by model.safetensors.index.json.
/// Exposes the config and lazy tensor views; never loads the weights. Owns the open files.
/// </summary>
public sealed class HfCheckpoint : IDisposable
{
    public const string ConfigFile = "config.json";
    public const string SingleFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";

    private readonly List<SafetensorsFile> _files = [];
    private readonly Dictionary<string, TensorSlice> _tensors = new(StringComparer.Ordinal);

    public string Directory { get; }
    public XLstmConfig Config { get; }
    /// <summary>All tensors by checkpoint name.</summary>
    public IReadOnlyDictionary<string, TensorSlice> Tensors => _tensors;
    /// <summary>Total bytes of tensor data.</summary>
    public long TotalBytes => _tensors.Values.Sum(t => t.ByteLength);

    private HfCheckpoint(string dir, XLstmConfig config)
    {
        Directory = dir;
        Config = config;
    }

    /// <summary>Opens <paramref name="dir"/>; the caller disposes the result.</summary>
    public static HfCheckpoint Open(string dir)
    {
        ArgumentNullException.ThrowIfNull(dir);
        if (!System.IO.Directory.Exists(dir)) throw new XLstmOnnxException($"{dir}: checkpoint folder not found.");
        var config = XLstmConfig.Load(Path.Combine(dir, ConfigFile));
        var ckpt = new HfCheckpoint(dir, config);
        try
        {
            string single = Path.Combine(dir, SingleFile), index = Path.Combine(dir, IndexFile);
            if (File.Exists(index)) ckpt.OpenSharded(index);
            else if (File.Exists(single)) ckpt.Add(SafetensorsFile.Open(single), null);
            else
            {
                throw new XLstmOnnxException($"{dir}: no weights found; expected {SingleFile} or {IndexFile} (PyTorch .bin checkpoints are not read: re-save with safe_serialization=True).");
            }
            return ckpt;
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
    }

    private void OpenSharded(string indexPath)
    {
        Dictionary<string, List<string>> byFile = new(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(indexPath));
            if (!doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
            {
                throw new XLstmOnnxException($"{indexPath}: expected an object field 'weight_map' (tensor name -> shard file).");
            }
            foreach (var p in map.EnumerateObject())
            {
                string file = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : throw new XLstmOnnxException($"{indexPath}: weight_map['{p.Name}'] must be a file name; found {p.Value.ValueKind}.");
                if (file.Contains('/') || file.Contains('\\') || file.Contains(".."))
                {
                    throw new XLstmOnnxException($"{indexPath}: weight_map['{p.Name}'] = \"{file}\" must be a file name inside the folder.");
                }
                if (!byFile.TryGetValue(file, out var names)) byFile[file] = names = [];
                names.Add(p.Name);
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException) // InvalidOperation: a string JSON cannot decode (a lone surrogate)
        {
            throw new XLstmOnnxException($"{indexPath}: invalid JSON ({e.Message}).", e);
        }
        foreach (var (file, names) in byFile.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            string path = Path.Combine(Directory, file);
            if (!File.Exists(path)) throw new XLstmOnnxException($"{indexPath}: shard '{file}' (holding '{names[0]}') does not exist.");
            var shard = SafetensorsFile.Open(path);
            Add(shard, names);
        }
    }

    private void Add(SafetensorsFile file, List<string>? indexedNames)
    {
        _files.Add(file);
        if (indexedNames is not null)
        {
            foreach (var name in indexedNames)
            {
                if (file.Find(name) is null)
                {
                    throw new XLstmOnnxException($"{IndexFile} maps tensor '{name}' to {Path.GetFileName(file.Path)}, which has no such tensor.");
                }
            }
        }
        foreach (var t in file.Tensors)
        {
            if (indexedNames is not null && !indexedNames.Contains(t.Name)) continue; // only the index decides where a name lives
            if (!_tensors.TryAdd(t.Name, t))
            {
                throw new XLstmOnnxException($"{file.Path}: tensor '{t.Name}' also appears in {_tensors[t.Name].File.Path}.");
            }
        }
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}
