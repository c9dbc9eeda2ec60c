using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime.Tokenization;

namespace XLstmOnnx.Tests;

/// <summary>
/// The C# tokenizer against golden ids from HF <c>tokenizers</c> (tests/golden/*_golden.json, made by
/// tools/tokenizer/make_golden.py), for GPT-NeoX-20B (xLSTM-7b's tokenizer, read from ../shared) and the shipped model's.
/// </summary>
[TestFixture]
public class TokenizerTests
{
    private static string Golden => Path.Combine(TestPaths.RepoRoot, "tests", "golden");

    public static IEnumerable<TestCaseData> GoldenFiles() =>
        Directory.Exists(Golden)
            ? Directory.EnumerateFiles(Golden, "*_golden.json").Order(StringComparer.Ordinal)
                .Select(f => new TestCaseData(Path.GetFileName(f)).SetName($"golden {Path.GetFileName(f)}"))
            : [];

    /// <summary>The tokenizer.json a golden file was made from, found by its sha256 in ../shared/data or models/; null if absent.</summary>
    private static string? FindTokenizer(string sha256)
    {
        var candidates = new List<string>();
        string shared = TestPaths.SharedData;
        if (Directory.Exists(shared)) candidates.AddRange(Directory.EnumerateFiles(shared, "*.json"));
        candidates.AddRange(Directory.EnumerateFiles(Path.Combine(TestPaths.RepoRoot, "models"), "tokenizer.json", SearchOption.AllDirectories));
        return candidates.FirstOrDefault(c => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(c))) == sha256);
    }

    private static (HfTokenizer Tokenizer, string Path, List<JsonElement> Strings) Load(string file)
    {
        var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Golden, file)));
        string sha = doc.RootElement.GetProperty("tokenizer_sha256").GetString()!;
        string? path = FindTokenizer(sha);
        if (path is null)
        {
            TestPaths.SharedMissing($"{doc.RootElement.GetProperty("tokenizer_file").GetString()} (sha256 {sha[..12]}…, in ../shared/data or models/)");
        }
        return (HfTokenizer.Load(path!), path!, [.. doc.RootElement.GetProperty("strings").EnumerateArray()]);
    }

    private static int[] Ids(JsonElement e, string key) => [.. e.GetProperty(key).EnumerateArray().Select(x => x.GetInt32())];

    [TestCase("WordPiece", "ByteLevel", "model.type", TestName = "not a BPE tokenizer")]
    [TestCase("BPE", "Metaspace", "pre_tokenizer.type", TestName = "a pre-tokenizer we do not read")]
    public void UnsupportedTokenizersNameTheField(string model, string preTokenizer, string field)
    {
        using var tmp = TestPaths.Temp();
        string path = tmp.Sub("tokenizer.json");
        File.WriteAllText(path, $$"""{"model": {"type": "{{model}}", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "{{preTokenizer}}"}, "added_tokens": []}""");
        var e = Assert.Throws<XLstmOnnxException>(() => HfTokenizer.Load(path));
        Assert.That(e!.Message, Does.Contain(path).And.Contain($"'{field}'"));
    }

    [TestCase("CI", "true", true)]
    [TestCase("CI", "TRUE", true)]
    [TestCase("XLSTM_REQUIRE_SHARED", "1", true)]
    [TestCase("CI", "false", false)]
    [TestCase("HOME", "/root", false)]
    public void SharedInputsAreRequiredInCi(string name, string value, bool required) =>
        Assert.That(TestPaths.SharedRequired(n => n == name ? value : null), Is.EqualTo(required));

    [Test]
    public void MissingSharedInputFailsInCiAndSkipsElsewhere()
    {
        Exception ex;
        // isolated: a caught Assert.Fail would otherwise still mark this test failed
        using (new NUnit.Framework.Internal.TestExecutionContext.IsolatedContext()) ex = Assert.Catch(() => TestPaths.SharedMissing("nothing.json"))!;
        bool ci = TestPaths.SharedRequired(Environment.GetEnvironmentVariable);
        Assert.That(ex, ci ? Is.InstanceOf<AssertionException>() : Is.InstanceOf<IgnoreException>());
        Assert.That(ex.Message, Does.Contain("nothing.json is missing"));
    }

    [Test]
    public void GoldenFilesExist() => Assert.That(GoldenFiles().Count(), Is.GreaterThanOrEqualTo(1), $"golden ids under {Golden}");

    [TestCaseSource(nameof(GoldenFiles))]
    public void IdsEqualHfTokenizers(string file)
    {
        var (tok, _, strings) = Load(file);
        Assert.That(strings, Has.Count.GreaterThanOrEqualTo(60));
        var mismatches = new List<string>();
        foreach (var s in strings)
        {
            string text = s.GetProperty("text").GetString()!;
            var expected = Ids(s, "ids");
            if (!tok.Encode(text).SequenceEqual(expected)) mismatches.Add($"{s.GetProperty("name").GetString()}: expected [{string.Join(",", expected)}], got [{string.Join(",", tok.Encode(text))}]");
            var withSpecial = s.TryGetProperty("ids_default", out _) ? Ids(s, "ids_default") : expected;
            if (!tok.Encode(text, addSpecialTokens: true).SequenceEqual(withSpecial)) mismatches.Add($"{s.GetProperty("name").GetString()} (with special tokens)");
        }
        Assert.That(mismatches, Is.Empty, "100% id equality with HF tokenizers");
    }

    [TestCaseSource(nameof(GoldenFiles))]
    public void DecodeEqualsHfAndRoundTrips(string file)
    {
        var (tok, _, strings) = Load(file);
        foreach (var s in strings)
        {
            string name = s.GetProperty("name").GetString()!, text = s.GetProperty("text").GetString()!;
            var ids = Ids(s, "ids");
            string decoded = tok.Decode(ids);
            Assert.That(decoded, Is.EqualTo(s.GetProperty("decoded").GetString()), $"{name}: decode equals HF's");
            // decode(encode(s)) == s, up to the tokenizer's own normalizer (NFC for NeoX: HF gives the same)
            Assert.That(tok.Decode(tok.Encode(text)), Is.EqualTo(s.GetProperty("roundtrip").GetBoolean() ? text : decoded), $"{name}: round trip");
            var stream = tok.CreateStream();
            var sb = new StringBuilder();
            foreach (int id in ids)
            {
                string piece = stream.Next(id);
                Assert.That(piece, Does.Not.Contain("\uFFFD").Or.Matches<string>(_ => decoded.Contains('\uFFFD')), $"{name}: no broken UTF-8 mid-stream");
                sb.Append(piece);
            }
            sb.Append(stream.Flush());
            Assert.That(sb.ToString(), Is.EqualTo(decoded), $"{name}: streaming decode");
        }
    }

    private static readonly string[] KnownOrtxDifferences = ["tab_space_mix", "shell_line", "ligature_and_width"];

    [TestCaseSource(nameof(GoldenFiles))]
    public void OnnxTokenizerAgreesWithCSharp(string file)
    {
        var (tok, path, strings) = Load(file);
        using var tmp = TestPaths.Temp();
        string model = tmp.Sub(TokenizerModel.FileName);
        string config = Path.Combine(Path.GetDirectoryName(path)!, "tokenizer_config.json");
        File.WriteAllBytes(model, TokenizerModel.Build(path, File.Exists(config) ? config : null));
        using var onnx = new OnnxTokenizer(model);
        int compared = 0;
        var differ = new List<string>();
        foreach (var s in strings)
        {
            string text = s.GetProperty("text").GetString()!;
            // onnxruntime-extensions ignores the NFC normalizer: compare where normalization changes nothing
            if (text.Length == 0 || text != text.Normalize(NormalizationForm.FormC)) continue;
            if (!onnx.Encode(text).SequenceEqual(tok.Encode(text))) differ.Add(s.GetProperty("name").GetString()!);
            compared++;
        }
        // The C# tokenizer equals HF on every string (IdsEqualHfTokenizers), so these are onnxruntime-extensions 0.14's own
        // deviations from HF: whitespace runs before a newline, a shell line's quote/space runs, and compatibility characters.
        Assert.That(differ, Is.SubsetOf(KnownOrtxDifferences), $"strings where tokenizer.onnx differs: {string.Join(", ", differ)}");
        Assert.That(compared, Is.GreaterThan(50));
    }
}
