using System.CommandLine;
using System.Globalization;
using System.Text.RegularExpressions;
using XLstmOnnx.Cli;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Export;

namespace XLstmOnnx.Tests;

/// <summary>The CLI's exit codes and output, run in-process.</summary>
[TestFixture]
[NonParallelizable] // redirects Console
public class CliTests
{
    /// <summary>The CLI in-process with <paramref name="stdin"/> as its input (chat reads lines from it).</summary>
    internal static (int Code, string Out, string Err) RunWithInput(string stdin, params string[] args)
    {
        var saved = Console.In;
        Console.SetIn(new StringReader(stdin));
        try
        {
            return Run(args);
        }
        finally
        {
            Console.SetIn(saved);
        }
    }

    internal static (int Code, string Out, string Err) Run(params string[] args)
    {
        var (o, e) = (Console.Out, Console.Error);
        using var outWriter = new StringWriter();
        using var errWriter = new StringWriter();
        Console.SetOut(outWriter);
        Console.SetError(errWriter);
        try
        {
            return (CliApp.Run(args), outWriter.ToString(), errWriter.ToString());
        }
        finally
        {
            Console.SetOut(o);
            Console.SetError(e);
        }
    }

    [Test]
    public void ExportThenVerifyPassesAndTightToleranceFails()
    {
        using var tmp = TestPaths.Temp();
        string ckpt = Path.Combine(TestPaths.Fixtures, "segmented");
        var export = Run("export", "--checkpoint", ckpt, "--output", tmp.Sub("m"));
        Assert.That(export.Code, Is.Zero, export.Out + export.Err);
        Assert.That(export.Err, Does.Contain("export: 100 %"), "progress is shown");

        var ok = Run("verify", "--model", tmp.Sub("m"), "--reference", Path.Combine(ckpt, "reference.safetensors"));
        Assert.That(ok.Code, Is.Zero, ok.Out);
        Assert.That(ok.Out, Does.Contain("PASS").And.Contain("seg_multi").And.Contain("greedy_ids"));
        // the table's words by position (tools/gpu/*.sh read them so): case, check, values, max abs, max rel, outside, rel L2, note
        var rows = ok.Out.Split('\n').Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).Where(w => w.Length >= 7).ToList();
        var logits = rows.Single(w => w[0] == "seg_multi" && w[1] == "logits");
        Assert.That(double.Parse(logits[6], System.Globalization.CultureInfo.InvariantCulture), Is.GreaterThanOrEqualTo(0).And.LessThan(1e-4), string.Join(' ', logits));
        Assert.That(rows.Single(w => w[1] == "greedy_ids")[6], Is.EqualTo("-"));

        // float rounding alone exceeds 1e-9: verify must notice and exit 1
        var strict = Run("verify", "--model", tmp.Sub("m"), "--reference", Path.Combine(ckpt, "reference.safetensors"), "--atol", "1e-9", "--rtol", "0");
        Assert.That(strict.Code, Is.EqualTo(1), strict.Out);
        Assert.That(strict.Out, Does.Contain("FAIL"));
    }

    [Test]
    public void RandomWeightExportNeedsNoCheckpointAndRuns()
    {
        using var tmp = TestPaths.Temp();
        var export = Run("export", "--random-weights", "--preset", "xlstm-tiny", "--num-blocks", "1", "--output", tmp.Sub("m"));
        Assert.That(export.Code, Is.Zero, export.Out + export.Err);
        var inspect = Run("inspect", "--model", tmp.Sub("m"), "--run", "20");
        Assert.That(inspect.Code, Is.Zero, inspect.Out + inspect.Err);
        Assert.That(inspect.Out, Does.Contain("layers 1").And.Contain("logits all;").And.Contain("ran 20 tokens"));
        var unknown = Run("export", "--random-weights", "--preset", "xlstm-huge", "--output", tmp.Sub("x"));
        Assert.That(unknown.Err, Does.Contain("xlstm-huge").And.Contain("xlstm-7b"), "lists the known presets");
    }

    [Test]
    public void BenchPrintsATableAndWritesJson()
    {
        using var tmp = TestPaths.Temp();
        Assert.That(Run("export", "--random-weights", "--preset", "xlstm-tiny", "--output", tmp.Sub("m"), "--last-logits-only").Code, Is.Zero);
        var r = Run("bench", "--model", tmp.Sub("m"), "--batch", "1,3", "--prompt-tokens", "40", "--new-tokens", "8", "--out", tmp.Sub("b.json"));
        Assert.That(r.Code, Is.Zero, r.Out + r.Err);
        Assert.That(r.Out, Does.Contain("prefill tok/s").And.Contain("decode tok/s"));
        var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(tmp.Sub("b.json"))).RootElement;
        var rows = json.GetProperty("results").EnumerateArray().ToList();
        Assert.That(rows.Select(x => x.GetProperty("batch").GetInt32()), Is.EqualTo(new[] { 1, 3 }));
        Assert.That(rows.All(x => x.GetProperty("decode_tokens_per_s").GetDouble() > 0 && x.GetProperty("ttft_ms").GetDouble() > 0));
        Assert.That(json.GetProperty("model").GetProperty("num_layers").GetInt32(), Is.EqualTo(2));
    }

    [Test]
    public void RandomWeightsAreAFunctionOfTheIndex()
    {
        var w = new GraphBuilder.Checkpoint.RandomWeight("t", [1000], 42, 0, 1);
        var whole = new float[1000];
        w.ReadFloat32(0, whole);
        var part = new float[300];
        w.ReadFloat32(500, part);
        Assert.That(part, Is.EqualTo(whole[500..800]), "any block, read in any order, gives the same values");
        Assert.That(whole.Average(), Is.InRange(-0.15, 0.15));
        Assert.That(Math.Sqrt(whole.Select(x => x * x).Average()), Is.InRange(0.9, 1.1), "unit variance");
    }

    [Test]
    public void BadInputIsOneLineWithExitCode2()
    {
        var r = Run("verify", "--model", "/nonexistent/model", "--reference", "x.safetensors");
        Assert.That(r.Code, Is.EqualTo(2));
        Assert.That(r.Out + r.Err, Does.Contain("xlstm_runtime.json is missing"));
    }

    [Test]
    public void UnknownDtypeIsRefusedByTheParser()
    {
        var r = Run("export", "--checkpoint", "a", "--output", "b", "--dtype", "int3");
        Assert.That(r.Code, Is.Not.Zero);
        Assert.That(r.Out + r.Err, Does.Contain("int3"));
    }

    internal static IEnumerable<Command> Commands() => CliApp.Build().Subcommands;

    private static Command CommandNamed(string name) => Commands().Single(c => c.Name == name);

    [Test]
    public void ChoicesPrintAsTypedAndParseInAnyCase()
    {
        var help = Run("export", "--help").Out;
        Assert.That(help, Does.Contain("--mlstm-kernels <onnx|custom>").And.Contain("[default: onnx]"));
        Assert.That(help, Does.Contain("--external-data <auto|always|never>").And.Contain("[default: auto]"));
        Assert.That(help, Does.Contain("--dtype <fp32|fp16|bf16>").And.Contain("[default: fp32]"));
        Assert.That(help, Does.Not.Contain("Custom").And.Not.Contain("Onnx").And.Not.Contain("Auto"), "no C#-cased enum names");

        using var tmp = TestPaths.Temp();
        var r = Run("export", "--random-weights", "--preset", "xlstm-tiny", "--num-blocks", "1", "--output", tmp.Sub("m"),
            "--dtype", "FP16", "--mlstm-kernels", "Custom", "--external-data", "ALWAYS", "--state-dtype", "BF16");
        Assert.That(r.Code, Is.Zero, r.Out + r.Err);
        var manifest = ModelManifest.Load(tmp.Sub("m"));
        Assert.That((manifest.Dtype, manifest.MLstmKernels, manifest.ExternalDataFile), Is.EqualTo((WeightDtype.Fp16, MLstmKernels.Custom, "model.onnx.data")));
        Assert.That(manifest.StateDtype, Is.EqualTo(StateDtype.Bf16));
        Assert.That(help, Does.Contain("--state-dtype <float32|bf16>").And.Contain("[default: float32]"));
    }

    [Test]
    public void EveryChoiceOptionNamesItsValuesInLowerCase()
    {
        var choices = 0;
        foreach (var command in Commands())
        {
            foreach (var option in command.Options)
            {
                Assert.That(option.ValueType.IsEnum, Is.False, $"{command.Name} {option.Name}: an enum option prints C# names; use ChoiceOption");
                if (option.HelpName?.Contains('|') != true) continue;
                choices++;
                Assert.That(option.HelpName, Is.EqualTo(option.HelpName.ToLowerInvariant()), $"{command.Name} {option.Name}");
            }
        }
        Assert.That(choices, Is.GreaterThanOrEqualTo(8), "device (7 commands), dtype (2), mlstm-kernels, external-data, log-level");
    }

    [TestCase("export --checkpoint c --output o", "--external-data", "sometimes", "auto, always, never")]
    [TestCase("export --checkpoint c --output o", "--dtype", "int3", "fp32, fp16, bf16")]
    [TestCase("export --checkpoint c --output o", "--state-dtype", "fp16", "float32, bf16")]
    [TestCase("make-checkpoint --config c --output o", "--dtype", "F32", "fp32, fp16, bf16")]
    [TestCase("serve --model m", "--log-level", "loud", "trace, debug, information, warning, error, critical, none")]
    [TestCase("generate --model m --prompt p", "--device", "gpu", "cpu, cuda")]
    public void ABadChoiceIsRefusedNamingTheOptionTheChoicesAndTheValue(string command, string option, string value, string expected)
    {
        var r = Run([.. command.Split(' '), option, value]);
        Assert.That(r.Code, Is.Not.Zero);
        Assert.That(r.Out + r.Err, Does.Contain($"option {option}: expected one of {expected} (any case); found '{value}'."));
    }

    [Test]
    public void MakeCheckpointTakesExportsDtypeNames()
    {
        using var tmp = TestPaths.Temp();
        var r = Run("make-checkpoint", "--config", Path.Combine(TestPaths.RepoRoot, "models", "presets", "xlstm-tiny.json"), "--num-blocks", "1",
            "--output", tmp.Sub("c"), "--dtype", "FP16");
        Assert.That(r.Code, Is.Zero, r.Out + r.Err);
        using var file = File.OpenRead(Path.Combine(tmp.Sub("c"), "model.safetensors"));
        var length = new byte[8];
        file.ReadExactly(length);
        var header = new byte[BitConverter.ToInt64(length)];
        file.ReadExactly(header);
        var dtypes = System.Text.Json.JsonDocument.Parse(header).RootElement.EnumerateObject()
            .Where(p => p.Name != "__metadata__").Select(p => p.Value.GetProperty("dtype").GetString()).Distinct();
        Assert.That(dtypes, Is.EqualTo(new[] { "F16" }), "fp16 is safetensors' F16");
    }

    [Test]
    public void CudaGraphIsOfferedWhereStepsAreDecoded()
    {
        var offering = Commands().Where(c => c.Options.Any(o => o.Name == "--cuda-graph")).Select(c => c.Name).Order();
        Assert.That(offering, Is.EqualTo(new[] { "bench", "chat", "generate", "serve" }), "score and verify run whole sequences: nothing to capture");
        Assert.That(Run("score", "--help").Out, Does.Not.Contain("cuda-graph"));
        Assert.That(Run("verify", "--model", "m", "--reference", "r", "--cuda-graph").Code, Is.Not.Zero, "refused, not ignored");
    }

    [Test]
    public void NoDefaultSpillsARawNewline()
    {
        foreach (var command in Commands())
        {
            var help = Run(command.Name, "--help").Out;
            foreach (string line in help.Split('\n').Where(l => l.Contains("[default:", StringComparison.Ordinal)))
            {
                Assert.That(line[line.IndexOf("[default:", StringComparison.Ordinal)..].TrimEnd(), Does.EndWith("]"), $"{command.Name}: {line}");
            }
        }
        var chat = Run("chat", "--help").Out;
        Assert.That(chat, Does.Contain("""[default: "\nUser: "]""").And.Contain("""[default: "\nAssistant:"]"""));
        var parsed = CliApp.Build().Parse(["chat", "--model", "m"]);
        Assert.That((string)parsed.GetValue<QuotedText>("--user-prefix"), Is.EqualTo("\nUser: "), "the value itself is unchanged");
        parsed = CliApp.Build().Parse(["chat", "--model", "m", "--user-prefix", "Q: "]);
        Assert.That((string)parsed.GetValue<QuotedText>("--user-prefix"), Is.EqualTo("Q: "));
    }

    [Test]
    public void BenchTakesTokenCountsNotText()
    {
        var help = Run("bench", "--help").Out;
        Assert.That(help, Does.Contain("--prompt-tokens <").And.Contain("--new-tokens <"));
        Assert.That(help, Does.Not.Contain("--prompt <").And.Not.Contain("--new <"));
        var r = Run("bench", "--model", "m", "--prompt", "40");
        Assert.That(r.Code, Is.Not.Zero);
        Assert.That(r.Out + r.Err, Does.Contain("--prompt"));
    }

    /// <summary>
    /// README's command table against the tool: every option it names exists on that command, and every literal value it
    /// shows for an option that has a default (<c>[--port 8000]</c>) is that default. Placeholders (<c>[--seed S]</c>)
    /// and examples for options without a default (<c>[--stop-token-ids 1,2]</c>) are skipped.
    /// </summary>
    [Test]
    public void ReadmeCommandTableMatchesTheTool()
    {
        var rows = File.ReadAllLines(Path.Combine(TestPaths.RepoRoot, "README.md"))
            .Select(l => Regex.Match(l, @"^\| `([a-z-]+) ([^`]*)` \|")).Where(m => m.Success).ToList();
        Assert.That(rows.Select(m => m.Groups[1].Value), Is.EquivalentTo(Commands().Select(c => c.Name)), "one row per command");
        int defaults = 0;
        foreach (var row in rows)
        {
            var command = CommandNamed(row.Groups[1].Value);
            string usage = row.Groups[2].Value;
            foreach (Match name in Regex.Matches(usage, @"(?<![\w-])--[a-z0-9-]+"))
            {
                Assert.That(command.Options.Any(o => o.Name == name.Value), $"README: {command.Name} {name.Value} is not an option of the tool");
            }
            foreach (Match m in Regex.Matches(usage, @"\[(--[a-z0-9-]+) ([^\]\s|\\\[]+)\]"))
            {
                string value = m.Groups[2].Value;
                if (Regex.IsMatch(value, "^[A-Z][A-Z0-9_]*$")) continue; // a placeholder: N, DIR, FILE
                var option = command.Options.Single(o => o.Name == m.Groups[1].Value);
                if (!option.HasDefaultValue) continue; // an example value ([--stop-token-ids 1,2]): the tool has no default to match
                string actual = Convert.ToString(option.GetDefaultValue(), CultureInfo.InvariantCulture)!;
                bool same = double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out double a)
                    && double.TryParse(actual, NumberStyles.Float, CultureInfo.InvariantCulture, out double b) ? a == b : value == actual;
                Assert.That(same, $"README: {command.Name} [{option.Name} {value}]; the tool's default is {actual}");
                defaults++;
            }
        }
        Assert.That(defaults, Is.GreaterThanOrEqualTo(15), "the check saw the defaults");
    }

    /// <summary>The tool's invocations in tools/**/*.sh use options the tool has.</summary>
    [Test]
    public void ScriptsUseTheToolsOptions()
    {
        int calls = 0;
        foreach (var script in Directory.EnumerateFiles(Path.Combine(TestPaths.RepoRoot, "tools"), "*.sh", SearchOption.AllDirectories))
        {
            foreach (Match m in Regex.Matches(File.ReadAllText(script), "\"\\$(?:CLI|cli)\" ([a-z-]+)([^\n]*)"))
            {
                var command = CommandNamed(m.Groups[1].Value);
                string args = m.Groups[2].Value.Split([" >", " |", " 2>"], StringSplitOptions.None)[0];
                foreach (Match name in Regex.Matches(args, @"(?<![\w-])--[a-z0-9-]+"))
                {
                    Assert.That(command.Options.Any(o => o.Name == name.Value), $"{Path.GetFileName(script)}: {command.Name} {name.Value} is not an option of the tool");
                }
                calls++;
            }
        }
        Assert.That(calls, Is.GreaterThanOrEqualTo(20));
    }
}
