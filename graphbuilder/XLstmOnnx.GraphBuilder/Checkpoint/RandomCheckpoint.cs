using System.Runtime.InteropServices;
using XLstmOnnx.GraphBuilder.Config;

namespace XLstmOnnx.GraphBuilder.Checkpoint;

/// <summary>
/// Writes an HF-format checkpoint (config.json + model.safetensors) with seeded random weights, streaming: each
/// tensor is generated a block at a time, so a 7B-width checkpoint needs no more memory than a block. Names and shapes
/// come from <see cref="WeightTable"/>. Values are scaled so that gates, caps and norms are all exercised.
/// </summary>
public static class RandomCheckpoint
{
    public static void Write(XLstmConfig config, string dir, SafetensorsDtype dtype, int seed, IProgress<(long Done, long Total)>? progress = null)
    {
        if (!dtype.IsWeightType()) throw new XLstmOnnxException($"option --dtype must be F32, F16 or BF16; found {dtype}.");
        Directory.CreateDirectory(dir);
        var entries = new List<SafetensorsWriter.Entry>();
        long total = 0, done = 0;
        foreach (var row in new WeightTable(config).Rows.Where(r => r.Present && r.TiedTo is null))
        {
            foreach (var part in row.Parts)
            {
                long count = part.Shape.Aggregate(1L, (a, b) => a * b);
                var (mean, std) = Distribution(row.Role, part, config);
                int partSeed = HashCode.Combine(seed, StableHash(part.Name));
                long bytes = count * dtype.Size();
                total += bytes;
                entries.Add(new SafetensorsWriter.Entry(part.Name, dtype, part.Shape, s =>
                {
                    WriteValues(s, count, dtype, partSeed, mean, std);
                    done += bytes;
                    progress?.Report((done, total));
                }, bytes));
            }
        }
        SafetensorsWriter.Write(Path.Combine(dir, HfCheckpoint.SingleFile), entries, new Dictionary<string, string> { ["format"] = "pt" });
        File.WriteAllText(Path.Combine(dir, HfCheckpoint.ConfigFile), config.ToJson());
    }

    private static (double Mean, double Std) Distribution(WeightRole role, WeightTable.Part part, XLstmConfig c)
    {
        double fanIn = part.Shape.Length == 2 ? part.Shape[1] : 1;
        return role switch
        {
            WeightRole.NormMlstm or WeightRole.NormFfn or WeightRole.OutNorm or WeightRole.MultiheadNorm => (1.0, 0.1),
            WeightRole.IfGateBias => part.Name.Contains("fgate", StringComparison.Ordinal) ? (3.0, 1.5) : (0.0, 2.0),
            WeightRole.IfGate => (0.0, 4.0 / Math.Sqrt(fanIn)),
            WeightRole.Embedding => (0.0, 1.0),
            _ when part.Shape.Length == 1 => (0.0, 0.05),
            _ => (0.0, 1.0 / Math.Sqrt(fanIn)),
        };
    }

    private static void WriteValues(Stream s, long count, SafetensorsDtype dtype, int seed, double mean, double std)
    {
        var rng = new Random(seed);
        const int block = 1 << 16;
        var f = new float[block];
        var bytes = new byte[block * dtype.Size()];
        for (long i = 0; i < count; i += block)
        {
            int n = (int)Math.Min(block, count - i);
            for (int j = 0; j < n; j++)
            {
                // Box-Muller; one normal per pair is enough here
                double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
                f[j] = (float)(mean + std * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
            }
            switch (dtype)
            {
                case SafetensorsDtype.F32:
                    s.Write(MemoryMarshal.AsBytes(f.AsSpan(0, n)));
                    break;
                case SafetensorsDtype.F16:
                    var h = MemoryMarshal.Cast<byte, Half>(bytes.AsSpan());
                    for (int j = 0; j < n; j++) h[j] = (Half)f[j];
                    s.Write(bytes.AsSpan(0, n * 2));
                    break;
                default:
                    var u = MemoryMarshal.Cast<byte, ushort>(bytes.AsSpan());
                    for (int j = 0; j < n; j++) u[j] = ToBf16(f[j]);
                    s.Write(bytes.AsSpan(0, n * 2));
                    break;
            }
        }
    }

    /// <summary>float32 to bfloat16, round to nearest even (as torch).</summary>
    public static ushort ToBf16(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x);
        if (float.IsNaN(x)) return 0x7FC0;
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    private static int StableHash(string s)
    {
        unchecked
        {
            int h = (int)2166136261;
            foreach (char ch in s) h = (h ^ ch) * 16777619;
            return h;
        }
    }
}
