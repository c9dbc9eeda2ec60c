using XLstmOnnx.Contract;
using XLstmOnnx.Contract.Safetensors;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;

namespace XLstmOnnx.Tests;

/// <summary>
/// Every committed fixture (an HF checkpoint plus a reference file written by transformers, tools/reference/) exports
/// and verifies: logits, final states, split/step continuation and greedy ids, in every export variant that changes
/// the graph or the file layout.
/// </summary>
[TestFixture]
public class FixtureTests
{
    // The bar for fp32 on CPU. Observed worst errors are ~3e-4 absolute on logits of up to ±30 (≈1e-5 relative).
    private const double Atol = 1e-4, Rtol = 1e-3;

    /// <summary>The transformers fixtures (tests/fixtures/*) and the shipped model (models/*), each with a reference file.</summary>
    public static IEnumerable<TestCaseData> Fixtures() =>
        Directory.EnumerateDirectories(TestPaths.Fixtures)
            .Concat(Directory.EnumerateDirectories(Path.Combine(TestPaths.RepoRoot, "models")))
            .Where(d => File.Exists(Path.Combine(d, "reference.safetensors")))
            .Order(StringComparer.Ordinal)
            .Select(d => new TestCaseData(d).SetName($"fixture {Path.GetFileName(d)}"));

    [Test]
    public void FixturesExist() =>
        Assert.That(Fixtures().Count(), Is.GreaterThanOrEqualTo(5), $"reference fixtures under {TestPaths.Fixtures} and models/");

    [TestCaseSource(nameof(Fixtures))]
    public void ExportsAndVerifies(string fixture) => _ = ExportAndVerify(fixture, new ExportOptions(), expectExternal: false);

    [TestCaseSource(nameof(Fixtures))]
    public void ExportsWithExternalDataAndVerifies(string fixture) =>
        _ = ExportAndVerify(fixture, new ExportOptions { ExternalData = ExternalDataMode.Always }, expectExternal: true);

    [TestCaseSource(nameof(Fixtures))]
    public void LastLogitsOnlyExportVerifies(string fixture) =>
        _ = ExportAndVerify(fixture, new ExportOptions { LastLogitsOnly = true }, expectExternal: false);

    /// <summary>The transformers fixtures whose reference holds hidden states (tools/reference/add_hidden_states.py).</summary>
    public static IEnumerable<TestCaseData> HiddenStateFixtures() =>
        Directory.EnumerateDirectories(TestPaths.Fixtures)
            .Where(d => File.Exists(Path.Combine(d, "reference.safetensors")))
            .Order(StringComparer.Ordinal)
            .Select(d => new TestCaseData(d).SetName($"hidden states {Path.GetFileName(d)}"));

    [Test]
    public void EveryTransformersFixtureHoldsHiddenStates()
    {
        foreach (var d in HiddenStateFixtures().Select(c => (string)c.Arguments[0]!))
        {
            using var f = SafetensorsFile.Open(Path.Combine(d, "reference.safetensors"));
            Assert.That(f.Metadata.ContainsKey("hidden_states"), $"{d}: header field hidden_states");
            Assert.That(f.Tensors.Count(t => t.Name.EndsWith(".hidden_states.0", StringComparison.Ordinal)), Is.GreaterThanOrEqualTo(4), $"{d}: cases with hidden states");
        }
    }

    /// <summary>
    /// A --hidden-states export's hidden_states.K equal transformers' output_hidden_states, entry by entry in its order
    /// (the embedding output, blocks 0..N-2, the normed output), in fp32 with the logits' bar; also the last-position
    /// and custom-op variants, whose outputs come from other nodes (the last-position slice, the fused residual adds).
    /// </summary>
    [TestCaseSource(nameof(HiddenStateFixtures))]
    public void HiddenStatesExportVerifies(string fixture)
    {
        foreach (var options in new[]
        {
            new ExportOptions { HiddenStates = true },
            new ExportOptions { HiddenStates = true, LastLogitsOnly = true },
            new ExportOptions { HiddenStates = true, MLstmKernels = MLstmKernels.Custom },
        })
        {
            if (options.MLstmKernels == MLstmKernels.Custom && CustomOpLibrary.Find() is null)
            {
                Assert.Fail($"{CustomOpLibrary.FileName} is not beside the tests: run them through ./build.sh --target=Test.");
            }
            var results = ExportAndVerify(fixture, options, expectExternal: false);
            var hidden = results.Where(r => r.Check.StartsWith("hidden_states.", StringComparison.Ordinal)).ToList();
            using var ckpt = HfCheckpoint.Open(fixture);
            int cases = hidden.Select(r => r.Case).Distinct().Count();
            Assert.That(cases, Is.GreaterThanOrEqualTo(4), $"{options}: cases with hidden states checked");
            Assert.That(hidden, Has.Count.EqualTo(cases * (ckpt.Config.NumBlocks + 1)), $"{options}: N + 1 hidden states per case");
        }
    }

    [Test]
    public void AutoSwitchesToExternalDataAboveTheThreshold() =>
        _ = ExportAndVerify(Path.Combine(TestPaths.Fixtures, "single_basic"), new ExportOptions { ExternalDataThresholdBytes = 1000 }, expectExternal: true);

    private static IReadOnlyList<CheckResult> ExportAndVerify(string dir, ExportOptions options, bool expectExternal)
    {
        using var tmp = TestPaths.Temp();
        var result = OnnxExporter.Export(dir, tmp.Sub("model"), options);
        Assert.That(result.DataPath is not null, Is.EqualTo(expectExternal), "external data file");
        if (expectExternal)
        {
            Assert.That(new FileInfo(result.ModelPath).Length, Is.LessThan(200_000), "model.onnx holds no weights when they are external");
        }
        using var session = XLstmSession.Load(tmp.Sub("model"));
        var results = ReferenceVerifier.Verify(session, Path.Combine(dir, "reference.safetensors"), Atol, Rtol);
        var checks = results.Select(r => r.Check).ToHashSet();
        Assert.Multiple(() =>
        {
            Assert.That(checks, Does.Contain("logits"));
            Assert.That(checks, Does.Contain("step_logits"), "the fixture has a split/step case");
            Assert.That(checks, Does.Contain("greedy_ids"), "the fixture has a greedy case");
            Assert.That(checks.Any(c => c.StartsWith("state.", StringComparison.Ordinal)), "the fixture has final states");
            foreach (var r in results)
            {
                Assert.That(r.Violations, Is.Zero, $"{r.Case} {r.Check}: max abs {r.MaxAbsError:E2}, max rel {r.MaxRelError:E2} {r.Note}");
            }
        });
        return results;
    }
}
