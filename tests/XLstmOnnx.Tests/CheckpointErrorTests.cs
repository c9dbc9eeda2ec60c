using System.Buffers.Binary;
using System.Text;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Export;

namespace XLstmOnnx.Tests;

/// <summary>Bad checkpoints give errors that name the file, the tensor and both values.</summary>
[TestFixture]
public class CheckpointErrorTests
{
    private TempDir _tmp = null!;

    [SetUp] public void SetUp() => _tmp = TestPaths.Temp();
    [TearDown] public void TearDown() => _tmp.Dispose();

    /// <summary>A safetensors file with the given header JSON and <paramref name="dataBytes"/> zero bytes of data.</summary>
    private string Raw(string header, int dataBytes, long? headerLenOverride = null)
    {
        string path = _tmp.Sub($"t{Guid.NewGuid():N}.safetensors");
        var json = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + json.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)(headerLenOverride ?? json.Length));
        json.CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static string Error(string path) => Assert.Throws<XLstmOnnxException>(() => SafetensorsFile.Open(path).Dispose())!.Message;

    [Test]
    public void ReadsAfterDisposeThrowNamingTheFile()
    {
        string path = _tmp.Sub("closed.safetensors");
        SafetensorsWriter.Write(path, [SafetensorsWriter.F32("w", [2, 3], [1, 2, 3, 4, 5, 6])]);
        var file = SafetensorsFile.Open(path);
        var slice = file.Get("w");
        Assert.That(slice.ToFloat32(), Is.EqualTo(new float[] { 1, 2, 3, 4, 5, 6 }), "readable while open");
        file.Dispose();
        file.Dispose(); // a second Dispose is a no-op
        Assert.Multiple(() =>
        {
            foreach (var (what, read) in new (string, Action)[]
            {
                ("a tensor view", () => slice.ToFloat32()),
                ("a block of a tensor view", () => slice.ReadFloat32(0, new float[2])),
                ("a lookup", () => file.Get("w")),
                ("the tensor list", () => _ = file.Tensors.Count),
            })
            {
                var e = Assert.Throws<ObjectDisposedException>(read, what)!;
                Assert.That(e.Message, Does.Contain(path).And.Contain("closed"), what);
            }
        });
    }

    /// <summary>
    /// A file built in memory (a state sent between replicas) has the bytes the file writer writes, reads back through
    /// <see cref="SafetensorsFile.FromBytes"/>, and its errors name what the caller calls it.
    /// </summary>
    [Test]
    public void AFileInMemoryIsTheFileOnDisk()
    {
        string path = _tmp.Sub("disk.safetensors");
        var entries = new List<SafetensorsWriter.Entry> { SafetensorsWriter.F32("w", [2, 3], [1, 2, 3, 4, 5, 6]), SafetensorsWriter.I64("ids", [2], [7, 9]) };
        var meta = new Dictionary<string, string> { ["format"] = "test" };
        SafetensorsWriter.Write(path, entries, meta);
        byte[] bytes = SafetensorsWriter.ToBytes(entries, meta, out long[] offsets);
        Assert.That(bytes, Is.EqualTo(File.ReadAllBytes(path)));
        using (var f = SafetensorsFile.FromBytes(bytes, "the request body"))
        {
            Assert.That(f.Get("w").ToFloat32(), Is.EqualTo(new float[] { 1, 2, 3, 4, 5, 6 }));
            Assert.That(f.Get("ids").ToInt64(), Is.EqualTo(new long[] { 7, 9 }));
            Assert.That(f.Metadata["format"], Is.EqualTo("test"));
            Assert.That(offsets, Is.EqualTo(new[] { f.Get("w").FileOffset, f.Get("ids").FileOffset }), "where each entry's bytes start");
        }
        var e = Assert.Throws<XLstmOnnxException>(() => SafetensorsFile.FromBytes(bytes[..40], "the request body").Dispose())!;
        Assert.That(e.Message, Does.StartWith("the request body: truncated or corrupt").And.Contain("32 bytes after it"));
    }

    [Test]
    public void TruncatedBelowTheLengthField()
    {
        string path = _tmp.Sub("short.safetensors");
        File.WriteAllBytes(path, [1, 2, 3]);
        Assert.That(Error(path), Does.Contain("short.safetensors").And.Contain("truncated").And.Contain("3 bytes"));
    }

    [Test]
    public void HeaderLongerThanTheFile() =>
        Assert.That(Error(Raw("{}", 0, headerLenOverride: 5000)), Does.Contain("truncated").And.Contain("5000").And.Contain("2 bytes"));

    [Test]
    public void BadHeaderJson() =>
        Assert.That(Error(Raw("{\"a\": [", 0)), Does.Contain("not valid JSON"));

    [Test]
    public void OffsetsOutOfRange() =>
        Assert.That(Error(Raw("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 8)),
            Does.Contain("'w'").And.Contain("[0, 16]").And.Contain("8 bytes"));

    [Test]
    public void OffsetsDisagreeWithShape() =>
        Assert.That(Error(Raw("""{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}""", 16)),
            Does.Contain("'w'").And.Contain("16 bytes").And.Contain("needs 12"));

    /// <summary>The safetensors library's rules for the byte ranges (Metadata::validate): they tile the data section exactly.</summary>
    [Test]
    public void TensorsThatShareBytesLeaveGapsOrTrailingBytesAreRefused()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Error(Raw("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}""", 16)),
                Does.Contain("tensor 'b' (bytes [8, 16)) overlaps tensor 'a' (bytes [0, 16))").And.Contain("must not share data"));
            Assert.That(Error(Raw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 8)),
                Does.Contain("overlaps"), "the same bytes twice");
            Assert.That(Error(Raw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}""", 20)),
                Does.Contain("tensor 'b' starts at byte 12 of the data section, but the tensors before it end at 8"));
            Assert.That(Error(Raw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 12)),
                Does.Contain("the tensors cover 8 bytes of the data section, which has 12"));
            Assert.That(Error(Raw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}""", 16)),
                Does.Contain("tensor 'a' appears twice"));
            Assert.That(Error(Raw("""{"__metadata__":{"format":7},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 8)),
                Does.Contain("metadata 'format' must be a string"));
            Assert.That(Error(Raw("""  {"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 8)), Does.Contain("must start with '{'"));
            Assert.That(Error(Raw("""{"a":{"dtype":"F32","shape":[4611686018427387904, 4],"data_offsets":[0,8]}}""", 8)),
                Does.Contain("more elements than any file can hold"));
            Assert.That(Error(Raw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":["0",8]}}""", 8)), Does.Contain("must be two integers"));
            Assert.That(Error(Raw("{\"a\\ud800\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8)), Does.Contain("not valid JSON"));
        });
        // an empty data section with zero-sized tensors is fine
        using var ok = SafetensorsFile.Open(Raw("""{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}""", 0));
        Assert.That(ok.Get("a").ElementCount, Is.Zero);
    }

    [Test]
    public void UnsupportedDtypeInHeader() =>
        Assert.That(Error(Raw("""{"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}""", 4)),
            Does.Contain("'w'").And.Contain("F8_E4M3").And.Contain("BF16"));

    [Test]
    public void NonFloatWeightIsRefusedByTheTable()
    {
        var dir = CopyFixture("single_basic");
        var ckptFile = Path.Combine(dir, "model.safetensors");
        using (var f = SafetensorsFile.Open(ckptFile))
        {
            var entries = f.Tensors.Select(t => t.Name == "backbone.out_norm.weight"
                ? new SafetensorsWriter.Entry(t.Name, SafetensorsDtype.I32, t.Shape, s => s.Write(new byte[t.ByteLength]), t.ByteLength)
                : Copy(t)).ToList();
            SafetensorsWriter.Write(ckptFile + ".new", entries);
        }
        File.Move(ckptFile + ".new", ckptFile, overwrite: true);
        var e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(dir, _tmp.Sub("out"), new ExportOptions()));
        Assert.That(e!.Message, Does.Contain("backbone.out_norm.weight").And.Contain("I32").And.Contain("F32, F16 or BF16"));
    }

    [Test]
    public void MissingTensor()
    {
        var dir = RewriteFixture("single_basic", drop: "backbone.blocks.0.mlstm_layer.k.weight");
        var e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(dir, _tmp.Sub("out"), new ExportOptions()));
        Assert.That(e!.Message, Does.Contain("missing tensor 'backbone.blocks.0.mlstm_layer.k.weight'").And.Contain("[64, 128]"));
    }

    [Test]
    public void ShapeMismatchNamesBothShapes()
    {
        var dir = RewriteFixture("single_basic", reshape: ("backbone.out_norm.weight", [64, 2]));
        var e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(dir, _tmp.Sub("out"), new ExportOptions()));
        Assert.That(e!.Message, Does.Contain("'backbone.out_norm.weight'").And.Contain("[64, 2]").And.Contain("[128]"));
    }

    [Test]
    public void UnexpectedTensor()
    {
        var dir = RewriteFixture("single_basic", extra: "backbone.blocks.7.norm_mlstm.weight");
        var e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(dir, _tmp.Sub("out"), new ExportOptions()));
        Assert.That(e!.Message, Does.Contain("unexpected tensor 'backbone.blocks.7.norm_mlstm.weight'").And.Contain("num_blocks 1"));
    }

    [Test]
    public void ShardMissingFromIndex()
    {
        var dir = CopyFixture("fused_bias");
        File.Delete(Path.Combine(dir, "model-00002-of-00003.safetensors"));
        var e = Assert.Throws<XLstmOnnxException>(() => HfCheckpoint.Open(dir).Dispose());
        Assert.That(e!.Message, Does.Contain("model-00002-of-00003.safetensors").And.Contain("does not exist"));
    }

    [Test]
    public void NoWeightsInFolder()
    {
        var dir = CopyFixture("single_basic");
        File.Delete(Path.Combine(dir, "model.safetensors"));
        var e = Assert.Throws<XLstmOnnxException>(() => HfCheckpoint.Open(dir).Dispose());
        Assert.That(e!.Message, Does.Contain("model.safetensors").And.Contain("model.safetensors.index.json"));
    }

    [Test]
    public void InvalidConfigValueStopsTheExport()
    {
        var dir = CopyFixture("single_basic");
        string cfg = Path.Combine(dir, "config.json");
        File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"num_heads\": 4", "\"num_heads\": 3"));
        var e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(dir, _tmp.Sub("out"), new ExportOptions()));
        Assert.That(e!.Message, Does.Contain("config.json").And.Contain("'num_heads'").And.Contain("3"));
        Assert.That(Directory.Exists(_tmp.Sub("out")), Is.False);
    }

    private string CopyFixture(string name)
    {
        string dst = _tmp.Sub(name);
        Directory.CreateDirectory(dst);
        foreach (var f in Directory.GetFiles(Path.Combine(TestPaths.Fixtures, name))) File.Copy(f, Path.Combine(dst, Path.GetFileName(f)));
        return dst;
    }

    private static SafetensorsWriter.Entry Copy(TensorSlice t) =>
        new(t.Name, t.Dtype, t.Shape, s => s.Write(t.File.Bytes(t.Offset, (int)t.ByteLength)), t.ByteLength);

    private string RewriteFixture(string name, string? drop = null, (string Name, long[] Shape)? reshape = null, string? extra = null)
    {
        var dir = CopyFixture(name);
        var path = Path.Combine(dir, "model.safetensors");
        using (var f = SafetensorsFile.Open(path))
        {
            var entries = new List<SafetensorsWriter.Entry>();
            foreach (var t in f.Tensors)
            {
                if (t.Name == drop) continue;
                var e = Copy(t);
                if (reshape is { } r && r.Name == t.Name) e = e with { Shape = r.Shape, WriteBytes = s => s.Write(new byte[r.Shape.Aggregate(4L, (a, b) => a * b)]), ByteLength = r.Shape.Aggregate(4L, (a, b) => a * b) };
                entries.Add(e);
            }
            if (extra is not null) entries.Add(SafetensorsWriter.F32(extra, [128], new float[128]));
            SafetensorsWriter.Write(path + ".new", entries);
        }
        File.Move(path + ".new", path, overwrite: true);
        return dir;
    }
}
