using System.Diagnostics;
using System.Text;
using XLstmOnnx.Contract;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Tests;

/// <summary>
/// The parsers that read untrusted bytes (safetensors headers of checkpoints and state files; config.json,
/// generation_config.json, the sharded index and xlstm_runtime.json), fed inputs made by a seeded mutator from the
/// fixtures' own files, for a bounded time each: every input is accepted or refused with <see cref="XLstmOnnxException"/>,
/// never another exception, a crash or a hang. A failure prints the seed, the iteration and where the input was kept, and
/// <c>XLSTM_FUZZ_SECONDS</c> / <c>XLSTM_FUZZ_SEED</c> rerun it longer or from another seed.
/// </summary>
[TestFixture]
public class FuzzTests
{
    /// <summary>Seconds per parser: CI's budget (two cores) is about 20 s each.</summary>
    private static double Seconds => double.TryParse(Environment.GetEnvironmentVariable("XLSTM_FUZZ_SECONDS"), out var s) ? s : 15;
    private static int Seed => int.TryParse(Environment.GetEnvironmentVariable("XLSTM_FUZZ_SEED"), out var s) ? s : 15;
    /// <summary>One parse taking longer than this counts as a hang.</summary>
    private static readonly TimeSpan HangLimit = TimeSpan.FromSeconds(10);

    private TempDir _tmp = null!;
    private ModelManifest _manifest = null!;
    private string _manifestJson = null!;
    private string _stateFile = null!;

    [OneTimeSetUp]
    public void Seeds()
    {
        _tmp = TestPaths.Temp();
        string model = _tmp.Sub("m");
        OnnxExporter.Export(Path.Combine(TestPaths.Fixtures, "single_basic"), model, new ExportOptions());
        _manifestJson = File.ReadAllText(Path.Combine(model, ModelManifest.FileName));
        _manifest = ModelManifest.Load(model);
        using var session = Runtime.XLstmSession.Load(model);
        using var g = new Generator(session, 2);
        g.Generate([[1, 2, 3], [4, 5]], new GenerationOptions { Greedy = true, MaxNewTokens = 2 });
        _stateFile = _tmp.Sub("state.safetensors");
        g.Snapshot().Save(_stateFile);
    }

    [OneTimeTearDown]
    public void Remove() => _tmp.Dispose();

    private static IEnumerable<string> FixtureFiles(string pattern) =>
        Directory.EnumerateFiles(TestPaths.Fixtures, pattern, SearchOption.AllDirectories).Order(StringComparer.Ordinal);

    [Test]
    public void SafetensorsHeaders()
    {
        var seeds = FixtureFiles("*.safetensors").Append(_stateFile).Select(File.ReadAllBytes).ToList();
        string file = _tmp.Sub("fuzz.safetensors");
        Fuzz("safetensors", seeds, (rng, seed) => Mutator.Safetensors(rng, seed), bytes =>
        {
            File.WriteAllBytes(file, bytes);
            Catch(() =>
            {
                using var f = SafetensorsFile.Open(file);
                foreach (var t in f.Tensors)
                {
                    if (t.Dtype.IsWeightType() && t.ElementCount <= 1 << 16) t.ReadFloat32(0, new float[t.ElementCount]);
                }
            });
            StateSnapshot.Load(file, _manifest);
        });
    }

    [Test]
    public void ConfigAndManifestJson()
    {
        var seeds = FixtureFiles("config.json").Concat(FixtureFiles("generation_config.json")).Concat(FixtureFiles("*.index.json"))
            .Select(File.ReadAllBytes).Append(Encoding.UTF8.GetBytes(_manifestJson)).ToList();
        string dir = _tmp.Sub("fuzz");
        Directory.CreateDirectory(dir);
        // the sharded fixture's shards, so that a mutated index is read against real files
        foreach (var f in Directory.EnumerateFiles(Path.Combine(TestPaths.Fixtures, "fused_bias"), "model-*.safetensors"))
        {
            File.Copy(f, Path.Combine(dir, Path.GetFileName(f)), overwrite: true);
        }
        Fuzz("json", seeds, (rng, seed) => Mutator.Json(rng, seed), bytes =>
        {
            // one input, read as each of the files: config.json (and a checkpoint with it), generation_config.json, the index, the manifest
            File.WriteAllBytes(Path.Combine(dir, "config.json"), bytes);
            Catch(() => XLstmConfig.Load(Path.Combine(dir, "config.json")));
            File.WriteAllBytes(Path.Combine(dir, "generation_config.json"), bytes);
            Catch(() => GenerationDefaults.Load(dir));
            File.WriteAllBytes(Path.Combine(dir, ModelManifest.FileName), bytes);
            Catch(() => ModelManifest.Load(dir));
            File.Copy(Path.Combine(TestPaths.Fixtures, "fused_bias", "config.json"), Path.Combine(dir, "config.json"), overwrite: true);
            File.WriteAllBytes(Path.Combine(dir, HfCheckpoint.IndexFile), bytes);
            Catch(() => HfCheckpoint.Open(dir).Dispose());
        });
    }

    private int _refused;

    /// <summary>Runs <paramref name="parse"/>; our exception is an answer (counted), anything else goes up.</summary>
    private void Catch(Action parse)
    {
        try
        {
            parse();
        }
        catch (XLstmOnnxException)
        {
            _refused++;
        }
    }

    private void Fuzz(string name, IReadOnlyList<byte[]> seeds, Func<Random, byte[], byte[]> mutate, Action<byte[]> parse)
    {
        var rng = new Random(Seed);
        var clock = Stopwatch.StartNew();
        int iterations = 0;
        _refused = 0;
        var slowest = TimeSpan.Zero;
        var worker = Task.Run(() =>
        {
            while (clock.Elapsed.TotalSeconds < Seconds)
            {
                var seed = seeds[rng.Next(seeds.Count)];
                byte[] input = mutate(rng, seed);
                var t0 = clock.Elapsed;
                try
                {
                    parse(input);
                }
                catch (XLstmOnnxException)
                {
                    _refused++;
                }
                catch (Exception e)
                {
                    string kept = Path.Combine(TestContext.CurrentContext.WorkDirectory, $"fuzz-{name}-{Seed}-{iterations}.bin");
                    File.WriteAllBytes(kept, input);
                    Assert.Fail($"{name}: seed {Seed}, iteration {iterations}: {e.GetType().Name}: {e.Message} (input kept in {kept})\n{e}");
                }
                var took = clock.Elapsed - t0;
                if (took > slowest) slowest = took;
                iterations++;
            }
        });
        if (!worker.Wait(TimeSpan.FromSeconds(Seconds) + HangLimit + TimeSpan.FromSeconds(20)))
        {
            Assert.Fail($"{name}: seed {Seed}: a parse did not return (hang) after {iterations} inputs");
        }
        worker.GetAwaiter().GetResult();
        TestContext.Out.WriteLine($"{name}: {iterations} inputs in {clock.Elapsed.TotalSeconds:F1} s, {_refused} refusals, slowest {slowest.TotalMilliseconds:F0} ms");
        Assert.That(slowest, Is.LessThan(HangLimit), $"{name}: one parse took {slowest}");
        Assert.That(iterations, Is.GreaterThan(100), "the fuzzer ran");
    }
}

/// <summary>Seeded mutations of bytes: generic ones, and ones aimed at JSON tokens and at the safetensors layout.</summary>
internal static class Mutator
{
    private static readonly string[] Numbers =
        ["0", "-1", "1", "2", "7", "64", "-0", "1.5", "1e3", "1e309", "-1e309", "9223372036854775807", "9223372036854775808", "18446744073709551616",
         "4294967296", "2147483648", "-9223372036854775808", "NaN", "null", "true", "\"1\"", "[]", "{}", "1E-400", "0.0"];
    private static readonly string[] Strings =
        ["\"\"", "\"F32\"", "\"BF16\"", "\"I64\"", "\"F64\"", "\"../x\"", "\"/etc/passwd\"", "\"model.onnx\"", "\"\\u0000\"", "\"\\ud800\"",
         "\"chunkwise--native_autograd\"", "\"xlstm\"", "\"fused\"", "\"custom\"", "\"a/b.safetensors\"", "\"__metadata__\"", "null", "7", "[]", "{}"];

    /// <summary>One to four mutations of <paramref name="seed"/>, of any kind.</summary>
    public static byte[] Json(Random rng, byte[] seed)
    {
        byte[] b = seed;
        int n = 1 + rng.Next(4);
        for (int i = 0; i < n; i++) b = rng.Next(3) == 0 ? Bytes(rng, b) : Tokens(rng, b);
        return b;
    }

    /// <summary>Mutations of the 8-byte header length and of the header (its JSON tokens or its bytes); the data is left alone.</summary>
    public static byte[] Safetensors(Random rng, byte[] seed)
    {
        if (seed.Length < 8) return Bytes(rng, seed);
        long headerLength = (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(seed);
        if (headerLength <= 0 || headerLength > seed.Length - 8) return Bytes(rng, seed);
        byte[] header = seed.AsSpan(8, (int)headerLength).ToArray();
        byte[] data = seed.AsSpan(8 + (int)headerLength).ToArray();
        int kind = rng.Next(10);
        if (kind == 0)
        {
            // the length field: off by a little, or anything
            long length = rng.Next(3) switch { 0 => headerLength + rng.Next(-16, 17), 1 => rng.NextInt64(), _ => (long)rng.Next(0, 200) };
            var copy = (byte[])seed.Clone();
            System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(copy, length);
            return copy;
        }
        if (kind == 1) return seed[..rng.Next(seed.Length)]; // truncated
        if (kind == 2) return [.. seed, .. Enumerable.Range(0, rng.Next(1, 64)).Select(_ => (byte)rng.Next(256))]; // trailing bytes
        header = kind < 7 ? Tokens(rng, header) : Bytes(rng, header);
        var result = new byte[8 + header.Length + data.Length];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)header.Length);
        header.CopyTo(result, 8);
        data.CopyTo(result, 8 + header.Length);
        return result;
    }

    /// <summary>Replaces a JSON number, string or bracket with another token, or drops or repeats one.</summary>
    private static byte[] Tokens(Random rng, byte[] b)
    {
        string text = Encoding.UTF8.GetString(b);
        var spans = new List<(int Start, int Length, char Kind)>();
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c == '"')
            {
                int j = i + 1;
                while (j < text.Length && text[j] != '"') j += text[j] == '\\' ? 2 : 1;
                j = Math.Min(j, text.Length - 1);
                spans.Add((i, j - i + 1, 's'));
                i = j;
            }
            else if (c is '-' or (>= '0' and <= '9'))
            {
                int j = i;
                while (j < text.Length && (char.IsAsciiDigit(text[j]) || text[j] is '-' or '+' or '.' or 'e' or 'E')) j++;
                spans.Add((i, j - i, 'n'));
                i = j - 1;
            }
            else if (c is '[' or ']' or '{' or '}' or ',' or ':')
            {
                spans.Add((i, 1, 'p'));
            }
        }
        if (spans.Count == 0) return Bytes(rng, b);
        var (start, length, kind) = spans[rng.Next(spans.Count)];
        string replacement = rng.Next(6) switch
        {
            0 => "",
            1 => text.Substring(start, length) + (rng.Next(2) == 0 ? "," : "") + text.Substring(start, length),
            2 => Numbers[rng.Next(Numbers.Length)],
            3 => Strings[rng.Next(Strings.Length)],
            4 when kind == 'n' => (long.TryParse(text.AsSpan(start, length), out long v) ? v + rng.Next(-3, 4) : 0).ToString(System.Globalization.CultureInfo.InvariantCulture),
            _ => spans[rng.Next(spans.Count)] is var other ? text.Substring(other.Start, other.Length) : "",
        };
        return Encoding.UTF8.GetBytes(text[..start] + replacement + text[(start + length)..]);
    }

    /// <summary>Flips, sets, inserts, deletes or repeats bytes.</summary>
    private static byte[] Bytes(Random rng, byte[] b)
    {
        if (b.Length == 0) return [(byte)rng.Next(256)];
        var list = b.ToList();
        int at = rng.Next(list.Count);
        switch (rng.Next(5))
        {
            case 0:
                list[at] ^= (byte)(1 << rng.Next(8));
                break;
            case 1:
                list[at] = "{}[]\",:-09eE\\ \0"u8[rng.Next(15)];
                break;
            case 2:
                list.InsertRange(at, Enumerable.Range(0, rng.Next(1, 8)).Select(_ => (byte)rng.Next(256)));
                break;
            case 3:
                list.RemoveRange(at, Math.Min(list.Count - at, rng.Next(1, 32)));
                break;
            default:
                int len = Math.Min(list.Count - at, rng.Next(1, 64));
                list.InsertRange(at, list.GetRange(at, len));
                break;
        }
        return [.. list];
    }
}
