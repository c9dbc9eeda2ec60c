using System.Reflection;
using System.Text.RegularExpressions;
using XLstmOnnx.Cli;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// A bad value names the API parameter when the libraries are called (<c>GenerationOptions.Temperature</c>), and the
/// CLI's flag when the CLI is (<c>option --temperature</c>): the libraries know no flags, the CLI maps them in one place
/// (<see cref="CliErrors.Flags"/>).
/// </summary>
[TestFixture]
[NonParallelizable] // the CLI cases redirect Console
public class ParameterErrorTests
{
    private static readonly string Fixture = Path.Combine(TestPaths.Fixtures, "fused_bias");

    private static void ExpectError(Action call, string parameter, string message)
    {
        var e = Assert.Throws<XLstmOnnxException>(call)!;
        Assert.That(e.Message, Is.EqualTo(message));
        Assert.That(e.Parameter, Is.EqualTo(parameter));
    }

    [Test]
    public void LibraryErrorsNameTheParameterTheExpectedAndTheFoundValue()
    {
        using var tmp = TestPaths.Temp();
        Assert.Multiple(() =>
        {
            ExpectError(() => new GenerationOptions { Temperature = 0 }.Validate(), "GenerationOptions.Temperature",
                "GenerationOptions.Temperature must be positive (or GenerationOptions.Greedy for argmax); found 0.");
            ExpectError(() => new GenerationOptions { MinP = 1.5 }.Validate(), "GenerationOptions.MinP", "GenerationOptions.MinP must be in [0, 1); found 1.5.");
            ExpectError(() => OnnxExporter.Export(Fixture, tmp.Sub("q"), new ExportOptions { QuantizeBits = 4, QuantizeBlockSize = 24 }),
                "ExportOptions.QuantizeBlockSize", "ExportOptions.QuantizeBlockSize must be one of 16, 32, 64, 128, 256 (the block sizes ONNX Runtime's MatMulNBits loads); found 24.");
            // a power of two, but ONNX Runtime 1.31 refuses to load MatMulNBits with it
            ExpectError(() => OnnxExporter.Export(Fixture, tmp.Sub("q"), new ExportOptions { QuantizeBits = 4, QuantizeBlockSize = 512 }),
                "ExportOptions.QuantizeBlockSize", "ExportOptions.QuantizeBlockSize must be one of 16, 32, 64, 128, 256 (the block sizes ONNX Runtime's MatMulNBits loads); found 512.");
            ExpectError(() => OnnxExporter.Export(Fixture, "", new ExportOptions()),
                "OnnxExporter.Export(outputDir)", "OnnxExporter.Export(outputDir) must be a folder path; found \"\".");
            ExpectError(() => OnnxExporter.Export(Fixture, tmp.Sub("d"), new ExportOptions { Dtype = (WeightDtype)7 }),
                "ExportOptions.Dtype", "ExportOptions.Dtype must be fp32, fp16 or bf16; found 7.");
            ExpectError(() => RuntimeOptions.ParseDevice("tpu"), "RuntimeOptions.Device", "RuntimeOptions.Device must be cpu or cuda; found \"tpu\".");
            ExpectError(() => new ServingOptions { MaxBatch = 0 }.Validate(), "ServingOptions.MaxBatch", "ServingOptions.MaxBatch must be at least 1; found 0.");
            ExpectError(() => new ServingOptions { PrefillGatherSteps = -1 }.Validate(), "ServingOptions.PrefillGatherSteps",
                "ServingOptions.PrefillGatherSteps must be 0 (at once) or more; found -1.");
            ExpectError(() => new ServingOptions { MaxBatch = 4, DecodeBuckets = [2, 8] }.Validate(), "ServingOptions.DecodeBuckets",
                "ServingOptions.DecodeBuckets must be sizes in [1, 4] (ServingOptions.MaxBatch); found \"2,8\".");
        });
        Assert.That(Directory.Exists(tmp.Sub("q")) || Directory.Exists(tmp.Sub("d")), Is.False, "nothing exported");
    }

    [Test]
    public void TheSameErrorsThroughTheCliNameTheFlags()
    {
        using var tmp = TestPaths.Temp();
        Assert.That(CliTests.Run("export", "--checkpoint", Fixture, "--output", tmp.Sub("m")).Code, Is.Zero);
        (string[] Args, string Error)[] cases =
        [
            (["generate", "--model", tmp.Sub("m"), "--prompt-ids", "1,2", "--temperature", "0"],
                "option --temperature must be positive (or --greedy for argmax); found 0."),
            (["generate", "--model", tmp.Sub("m"), "--prompt-ids", "1,2", "--cuda-graph"], "option --cuda-graph needs --device Cuda; found Cpu."),
            (["export", "--checkpoint", Fixture, "--output", tmp.Sub("q"), "--quantize", "int4", "--block-size", "24"],
                "option --block-size must be one of 16, 32, 64, 128, 256 (the block sizes ONNX Runtime's MatMulNBits loads); found 24."),
            (["export", "--checkpoint", Fixture, "--output", tmp.Sub("q"), "--quantize", "int4", "--block-size", "512"],
                "option --block-size must be one of 16, 32, 64, 128, 256 (the block sizes ONNX Runtime's MatMulNBits loads); found 512."),
            (["export", "--checkpoint", Fixture, "--output", ""], "option --output must be a folder path; found \"\"."),
            (["export", "--checkpoint", Fixture, "--output", tmp.Sub("n"), "--next-token"],
                "option --next-token needs --last-logits-only (it is the argmax of the last position's logits)."),
            (["serve", "--model", tmp.Sub("m"), "--max-batch", "0"], "option --max-batch must be at least 1; found 0."),
            (["serve", "--model", tmp.Sub("m"), "--prefill-gather-steps", "-1"], "option --prefill-gather-steps must be 0 (at once) or more; found -1."),
            (["serve", "--model", tmp.Sub("m"), "--mixed-prompt-rows", "0"], "option --mixed-prompt-rows must be at least 1; found 0."),
            (["serve", "--model", tmp.Sub("m"), "--max-batch", "4", "--decode-buckets", "2,8"],
                "option --decode-buckets must be sizes in [1, 4] (--max-batch); found \"2,8\"."),
            (["export", "--checkpoint", Fixture, "--output", tmp.Sub("x"), "--mixed-graph"],
                "option --mixed-graph needs --mlstm-kernels custom (found onnx)."),
        ];
        foreach (var (args, error) in cases)
        {
            var r = CliTests.Run(args);
            Assert.That((r.Code, r.Err.Trim()), Is.EqualTo((CliErrors.BadInput, $"error: {error}")), string.Join(' ', args));
        }
        // found once the model is loaded: after serve's progress line
        var mixed = CliTests.Run("serve", "--model", tmp.Sub("m"), "--mixed-steps", "on");
        Assert.That(mixed.Code, Is.EqualTo(CliErrors.BadInput));
        Assert.That(mixed.Err.Trim(), Does.EndWith($"error: option --mixed-steps true needs the mixed graph; {tmp.Sub("m")} has none "
            + "(xlstm_runtime.json field 'mixed_model_file' is absent): export with --mixed-graph."));
        // segments of 20 tokens, chunks of 8: a padded reading cannot be whole chunks
        Assert.That(CliTests.Run("export", "--checkpoint", Path.Combine(TestPaths.Fixtures, "segmented"), "--output", tmp.Sub("s")).Code, Is.Zero);
        var pad = CliTests.Run("serve", "--model", tmp.Sub("s"), "--pad-prompts", "on");
        Assert.That(pad.Code, Is.EqualTo(CliErrors.BadInput));
        Assert.That(pad.Err.Trim(), Does.EndWith($"error: option --pad-prompts true needs segments of whole chunks; {tmp.Sub("s")}'s max_inference_chunksize "
            + "20 is not a multiple of its chunk_size 8, so a padded reading would still end its segments in recurrent steps."));
    }

    [Test]
    public void MessagesAreRewrittenNameByWholeName()
    {
        var e = XLstmOnnxException.InParameter("RuntimeOptions.DeviceId", "RuntimeOptions.DeviceId 3 needs RuntimeOptions.Device Cuda; found Cpu.");
        Assert.That(CliErrors.Message(e), Is.EqualTo("option --device-id 3 needs --device Cuda; found Cpu."));
        var mentioned = new XLstmOnnxException("model: exported with ExportOptions.LastLogitsOnly; ExportOptions.LastLogitsOnlyX is not a parameter.");
        Assert.That(CliErrors.Message(mentioned), Is.EqualTo("model: exported with --last-logits-only; ExportOptions.LastLogitsOnlyX is not a parameter."),
            "names inside messages are rewritten; the 'option' prefix is for the parameter at fault only");
        var unmapped = XLstmOnnxException.MustBe("Scorer.Score(labels)", "positive", 0);
        Assert.That(CliErrors.Message(unmapped), Is.EqualTo("Scorer.Score(labels) must be positive; found 0."), "a parameter the CLI has no flag for stays");
    }

    /// <summary>Options with no flag: the CLI sets them itself or leaves their defaults.</summary>
    private static readonly string[] NotOnTheCommandLine =
    [
        ExportOptions.Name(nameof(ExportOptions.AttentionMask)),
        ExportOptions.Name(nameof(ExportOptions.ExternalDataThresholdBytes)),
        ServingOptions.Name(nameof(ServingOptions.PrefixCacheMinTokens)),
        ServingOptions.Name(nameof(ServingOptions.PrefillShare)),
        ServingOptions.Name(nameof(ServingOptions.WarmUp)),
        // OpenAI API fields of the server and the library: what the CLI prints is text
        GenerationOptions.Name(nameof(GenerationOptions.LogitBias)),
        GenerationOptions.Name(nameof(GenerationOptions.LogProbs)),
        GenerationOptions.Name(nameof(GenerationOptions.TopLogProbs)),
    ];

    [Test]
    public void EveryOptionHasAFlagThatTheCliHas()
    {
        var flags = CliTests.Commands().SelectMany(c => c.Options).Select(o => o.Name).ToHashSet();
        foreach (var (parameter, flag) in CliErrors.Flags)
        {
            Assert.That(flags, Does.Contain(flag), $"{parameter} maps to {flag}, which no command has");
        }
        foreach (var type in new[] { typeof(ExportOptions), typeof(RuntimeOptions), typeof(GenerationOptions), typeof(ServingOptions) })
        {
            foreach (var property in type.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite))
            {
                string parameter = $"{type.Name}.{property.Name}";
                Assert.That(CliErrors.Flags.ContainsKey(parameter) || NotOnTheCommandLine.Contains(parameter), $"{parameter}: no flag in CliErrors.Flags");
            }
        }
    }

    [Test]
    public void TheLibrariesNameNoFlag()
    {
        // string literals on code lines (comments may describe the CLI)
        var flags = new Regex(@"""[^""\n]*(?:option --|" + string.Join('|', CliErrors.Flags.Values.Distinct().Select(f => Regex.Escape(f) + @"\b")) + ")");
        var found = new List<string>();
        foreach (string folder in new[] { "graphbuilder", "runtime" })
        {
            foreach (string file in Directory.EnumerateFiles(Path.Combine(TestPaths.RepoRoot, folder), "*.cs", SearchOption.AllDirectories)
                .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal)
                    && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}", StringComparison.Ordinal)))
            {
                foreach (var (line, n) in File.ReadLines(file).Select((l, i) => (l, i + 1)))
                {
                    if (line.TrimStart().StartsWith("//", StringComparison.Ordinal)) continue;
                    if (flags.IsMatch(line)) found.Add($"{Path.GetRelativePath(TestPaths.RepoRoot, file)}:{n}: {line.Trim()}");
                }
            }
        }
        Assert.That(found, Is.Empty);
    }
}
