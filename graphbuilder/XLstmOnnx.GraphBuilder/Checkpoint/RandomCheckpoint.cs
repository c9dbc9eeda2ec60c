using System.Runtime.InteropServices;
using XLstmOnnx.Contract;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Config;

namespace XLstmOnnx.GraphBuilder.Checkpoint;

/// <summary>
/// Seeded random weights for a config, with names and shapes from <see cref="WeightTable"/>: as an HF-format
/// checkpoint on disk (<see cref="Write"/>) or bound directly for an export with no checkpoint (<see cref="Bind"/>).
/// Values are a counter-based function of (seed, tensor, index), so any block of any tensor is produced on its own
/// and a 7B-sized model streams through bounded memory. They are scaled so that gates, caps and norms all matter.
/// </summary>
public static class RandomCheckpoint
{
    /// <summary>Random weights for <paramref name="config"/>, ready for <c>OnnxExporter.ExportModel</c>.</summary>
    public static BoundWeights Bind(XLstmConfig config, int seed) =>
        new WeightTable(config).Bind((row, part) => Source(row, part, seed));

    /// <summary>
    /// Writes config.json and model.safetensors (one file) into <paramref name="dir"/>; the config carries kernel names
    /// transformers loads (<see cref="KernelNames.ForTransformers"/>), the weights do not depend on them.
    /// </summary>
    public static void Write(XLstmConfig config, string dir, SafetensorsDtype dtype, int seed, IProgress<(long Done, long Total)>? progress = null)
    {
        if (!dtype.IsWeightType()) throw XLstmOnnxException.MustBe($"{nameof(RandomCheckpoint)}.{nameof(Write)}({nameof(dtype)})", "F32, F16 or BF16", dtype);
        Directory.CreateDirectory(dir);
        var entries = new List<SafetensorsWriter.Entry>();
        long total = 0, done = 0;
        foreach (var row in new WeightTable(config).Rows.Where(r => r.Present && r.TiedTo is null))
        {
            foreach (var part in row.Parts)
            {
                var source = Source(row, part, seed);
                long bytes = source.ElementCount() * dtype.Size();
                total += bytes;
                entries.Add(new SafetensorsWriter.Entry(part.Name, dtype, part.Shape, s =>
                {
                    WriteValues(s, source, dtype);
                    done += bytes;
                    progress?.Report((done, total));
                }, bytes));
            }
        }
        SafetensorsWriter.Write(Path.Combine(dir, HfCheckpoint.SingleFile), entries, new Dictionary<string, string> { ["format"] = "pt" });
        // like the weights (SafetensorsWriter), the config goes to a temporary name and is moved into place
        string configPath = Path.Combine(dir, HfCheckpoint.ConfigFile), tmp = $"{configPath}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
        File.WriteAllText(tmp, KernelNames.ForTransformers(config).ToJson());
        File.Move(tmp, configPath, overwrite: true);
    }

    private static RandomWeight Source(WeightTable.Row row, WeightTable.Part part, int seed)
    {
        double fanIn = part.Shape.Length == 2 ? part.Shape[1] : 1;
        var (mean, std) = row.Role switch
        {
            WeightRole.NormMlstm or WeightRole.NormFfn or WeightRole.OutNorm or WeightRole.MultiheadNorm => (1.0, 0.1),
            WeightRole.IfGateBias => part.Name.Contains("fgate", StringComparison.Ordinal) ? (3.0, 1.5) : (0.0, 2.0),
            WeightRole.IfGate => (0.0, 4.0 / Math.Sqrt(fanIn)),
            WeightRole.Embedding => (0.0, 1.0),
            _ when part.Shape.Length == 1 => (0.0, 0.05),
            _ => (0.0, 1.0 / Math.Sqrt(fanIn)),
        };
        return new RandomWeight(part.Name, part.Shape, (ulong)(uint)seed << 32 ^ StableHash(part.Name), mean, std);
    }

    private static void WriteValues(Stream s, IWeightSource source, SafetensorsDtype dtype)
    {
        const int block = 1 << 16;
        var f = new float[block];
        var bytes = new byte[block * dtype.Size()];
        long count = source.ElementCount();
        for (long i = 0; i < count; i += block)
        {
            int n = (int)Math.Min(block, count - i);
            source.ReadFloat32(i, f.AsSpan(0, n));
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
                    BFloat16Bits.FromFloat(f.AsSpan(0, n), u);
                    s.Write(bytes.AsSpan(0, n * 2));
                    break;
            }
        }
    }

    private static uint StableHash(string s)
    {
        unchecked
        {
            uint h = 2166136261;
            foreach (char ch in s) h = (h ^ ch) * 16777619;
            return h;
        }
    }
}

/// <summary>Normal(mean, std) values, a pure function of (key, index): any block can be read in any order.</summary>
public sealed class RandomWeight(string name, long[] shape, ulong key, double mean, double std) : IWeightSource
{
    public long[] Shape { get; } = shape;
    public string Description => $"random {name}";

    /// <summary>Below this many values one thread fills the span; above it the cores share it (a 7B export draws 6.9e9 values).</summary>
    private const int ParallelGrain = 1 << 15;

    public unsafe void ReadFloat32(long start, Span<float> dest)
    {
        if (dest.Length < 2 * ParallelGrain)
        {
            Fill(start, dest);
            return;
        }
        fixed (float* p = dest)
        {
            float* basePtr = p; // a span cannot enter the lambda; the pointer stays valid: fixed outlives Parallel.For
            int n = dest.Length, pieces = (n + ParallelGrain - 1) / ParallelGrain;
            Parallel.For(0, pieces, k =>
            {
                int a = k * ParallelGrain, len = Math.Min(ParallelGrain, n - a);
                Fill(start + a, new Span<float>(basePtr + a, len));
            });
        }
    }

    private void Fill(long start, Span<float> dest)
    {
        for (int i = 0; i < dest.Length; i++)
        {
            ulong z = Mix(key + (ulong)(start + i) * 0x9E3779B97F4A7C15UL);
            double u1 = ((z >> 11) + 1) * (1.0 / (1UL << 53)), u2 = (Mix(z) >> 11) * (1.0 / (1UL << 53));
            dest[i] = (float)(mean + std * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2)); // Box-Muller
        }
    }

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
