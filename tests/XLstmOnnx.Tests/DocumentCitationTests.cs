using System.Diagnostics;
using System.Text.RegularExpressions;

namespace XLstmOnnx.Tests;

/// <summary>
/// Every document a source file or README cites is in the repository (docs/style.md, "Comments cite documents in
/// this repository"): a cited path exists, a cited section is a heading of that page, and nothing cites documents
/// by numbers or names that only exist elsewhere ("§4.5", "trap 18", "style rule 9"). The README's layout table
/// lists exactly the repository's top-level folders.
/// </summary>
[TestFixture]
public partial class DocumentCitationTests
{
    /// <summary>Text files whose comments or prose can cite documents.</summary>
    private static readonly string[] Scanned = [".cs", ".cc", ".h", ".cu", ".cuh", ".md", ".py", ".sh", ".cake", ".txt", ".proto3"];

    /// <summary>A repository path ending in .md, e.g. docs/numerics.md or tools/bench/README.md (not part of a URL or a longer path).</summary>
    [GeneratedRegex(@"(?<![\w/.\-:])((?:[\w.\-]+/)+[\w.\-]+\.md)\b")]
    private static partial Regex MarkdownPath();

    /// <summary>A docs/ citation with its quoted sections: docs/numerics.md, "Padding" (and "…").</summary>
    [GeneratedRegex(@"(?<![\w/.\-])docs/(?<file>[\w.\-/]+\.md)(?<sections>(?:\s*(?:,|and)?\s*""[^""\n]+"")*)")]
    private static partial Regex DocsCitation();

    [GeneratedRegex(@"""([^""\n]+)""")]
    private static partial Regex Quoted();

    /// <summary>A relative Markdown link to a page: [text](page.md) or [text](page.md#anchor).</summary>
    [GeneratedRegex(@"\]\((?<path>[^)\s#:]+\.md)(?:#(?<anchor>[\w\-]+))?\)")]
    private static partial Regex MarkdownLink();

    /// <summary>Ways of citing documents that are not in this repository.</summary>
    private static readonly (Regex Pattern, string What)[] Foreign =
    [
        (new Regex(@"§\s*\d"), "a numbered section of a document outside the repository"),
        (new Regex(@"\btraps?\s+\d+", RegexOptions.IgnoreCase), "a numbered trap (docs/numerics.md names them)"),
        (new Regex(@"\b(?:style|design)\s+rules?\s+\d+", RegexOptions.IgnoreCase), "a numbered style rule (docs/style.md names them)"),
        (new Regex(@"performance-anchors|style-anchors|onnxruntime-notes|xlstm-reference(?!-v\d)"), "a document outside the repository"),
    ];

    [GeneratedRegex(@"^#+\s+(.*?)\s*$", RegexOptions.Multiline)]
    private static partial Regex Heading();

    /// <summary>Files git tracks, plus new files it would track (not ignored), relative to the repository root.</summary>
    private static List<string> RepositoryFiles()
    {
        var psi = new ProcessStartInfo("git", "ls-files --cached --others --exclude-standard")
        {
            WorkingDirectory = TestPaths.RepoRoot,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var git = Process.Start(psi) ?? throw new InvalidOperationException("git did not start");
        string output = git.StandardOutput.ReadToEnd();
        string error = git.StandardError.ReadToEnd();
        git.WaitForExit();
        if (git.ExitCode != 0) Assert.Fail($"git ls-files in {TestPaths.RepoRoot} exited with {git.ExitCode}: {error}");
        return [.. output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(f => File.Exists(Path.Combine(TestPaths.RepoRoot, f)))];
    }

    /// <summary>The headings of a Markdown page.</summary>
    private static HashSet<string> Headings(string path) =>
        [.. Heading().Matches(File.ReadAllText(path)).Select(m => m.Groups[1].Value)];

    /// <summary>GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.</summary>
    private static string Anchor(string heading) =>
        Regex.Replace(heading.ToLowerInvariant(), @"[^\p{L}\p{N}\s\-_]", "").Replace(' ', '-');

    /// <summary>What is wrong with the citations in <paramref name="text"/> of the file <paramref name="file"/> (repository-relative).</summary>
    internal static List<string> Problems(string root, string file, string text)
    {
        var problems = new List<string>();
        string dir = Path.GetDirectoryName(file) ?? "";
        string[] lines = text.Split('\n');
        for (int n = 0; n < lines.Length; n++)
        {
            string line = lines[n], at = $"{file}:{n + 1}";
            foreach (var (pattern, what) in Foreign)
            {
                if (pattern.Match(line) is { Success: true } m) problems.Add($"{at}: '{m.Value}' cites {what}: cite a docs/ page and section instead");
            }
            foreach (Match m in MarkdownPath().Matches(line))
            {
                string cited = m.Groups[1].Value;
                if (!File.Exists(Path.Combine(root, cited)) && !File.Exists(Path.Combine(root, dir, cited)))
                {
                    problems.Add($"{at}: cites {cited}, which is not in the repository");
                }
            }
            foreach (Match m in DocsCitation().Matches(line))
            {
                string page = Path.Combine(root, "docs", m.Groups["file"].Value);
                if (!File.Exists(page)) continue; // reported above
                if (line[(m.Index + m.Length)..].Trim() == ",")
                {
                    problems.Add($"{at}: the citation of docs/{m.Groups["file"].Value} continues on the next line; keep a page and its section on one line");
                }
                var headings = Headings(page);
                foreach (Match q in Quoted().Matches(m.Groups["sections"].Value))
                {
                    if (!headings.Contains(q.Groups[1].Value))
                    {
                        problems.Add($"{at}: docs/{m.Groups["file"].Value} has no section \"{q.Groups[1].Value}\" (its sections: {string.Join(", ", headings.Select(h => $"\"{h}\""))})");
                    }
                }
            }
            foreach (Match m in MarkdownLink().Matches(line))
            {
                string page = Path.GetFullPath(Path.Combine(root, dir, m.Groups["path"].Value));
                if (!File.Exists(page))
                {
                    problems.Add($"{at}: links to {m.Groups["path"].Value}, which is not in the repository");
                }
                else if (m.Groups["anchor"].Success && !Headings(page).Select(Anchor).Contains(m.Groups["anchor"].Value))
                {
                    problems.Add($"{at}: {m.Groups["path"].Value} has no heading for the anchor #{m.Groups["anchor"].Value}");
                }
            }
        }
        return problems;
    }

    [Test]
    public void EveryCitedDocumentAndSectionIsInTheRepository()
    {
        string self = Path.Combine("tests", "XLstmOnnx.Tests", $"{nameof(DocumentCitationTests)}.cs"); // its patterns name what they refuse
        var files = RepositoryFiles().Where(f => Scanned.Contains(Path.GetExtension(f)) && f != self).ToList();
        Assert.That(files, Has.Count.GreaterThan(100), "the repository's sources");
        var problems = files.SelectMany(f => Problems(TestPaths.RepoRoot, f, File.ReadAllText(Path.Combine(TestPaths.RepoRoot, f)))).ToList();
        Assert.That(problems, Is.Empty, string.Join("\n", problems));
    }

    [Test]
    public void TheCheckFindsMissingPagesSectionsAndForeignCitations()
    {
        string root = TestPaths.RepoRoot;
        Assert.Multiple(() =>
        {
            Assert.That(Problems(root, "x.cs", """// (docs/numerics.md, "Padding") and docs/exported-graph.md, "State" and "Names" """), Is.Empty);
            Assert.That(Problems(root, "x.cs", """// docs/numerics.md, "No such section" """), Has.Count.EqualTo(1).And.Some.Contain("no section \"No such section\""));
            Assert.That(Problems(root, "x.cs", """// docs/exported-graph.md, "State" and "Nothing" """), Has.Count.EqualTo(1).And.Some.Contain("\"Nothing\""));
            Assert.That(Problems(root, "x.cs", "// as docs/numerics.md,\n// \"Padding\" says"), Has.Count.EqualTo(1).And.Some.Contain("one line"));
            Assert.That(Problems(root, "x.cs", "// see docs/missing-page.md"), Has.Count.EqualTo(1).And.Some.Contain("docs/missing-page.md"));
            Assert.That(Problems(root, "x.cs", "// format: tools/nothing/README.md"), Has.Count.EqualTo(1));
            Assert.That(Problems(root, "x.cs", "// https://github.com/onnx/onnx/blob/main/docs/Operators.md"), Is.Empty, "URLs are not repository paths");
            foreach (var foreign in new[] { "(reference §4.5)", "(trap 18)", "(style rule 9)", "performance-anchors", "see xlstm-reference" })
            {
                Assert.That(Problems(root, "x.cs", $"// {foreign}"), Has.Count.EqualTo(1), foreign);
            }
            Assert.That(Problems(root, "x.py", "FORMAT = \"xlstm-reference-v1\""), Is.Empty, "the reference file format's name is not a citation");
            Assert.That(Problems(root, "docs/x.md", "[a](numerics.md#padding) [b](numerics.md#no-such) [c](gone.md)"), Has.Count.EqualTo(2));
        });
    }

    [Test]
    public void ReadmeLayoutTableListsTheTopLevelFolders()
    {
        string readme = File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "README.md"));
        int start = readme.IndexOf("\n## Layout", StringComparison.Ordinal);
        Assert.That(start, Is.GreaterThan(0), "README.md has a Layout section");
        int end = readme.IndexOf("\n## ", start + 1, StringComparison.Ordinal);
        string section = end < 0 ? readme[start..] : readme[start..end];
        var listed = Regex.Matches(section, @"^\| `([^`/]+)/` \|", RegexOptions.Multiline).Select(m => m.Groups[1].Value).Order().ToList();
        var folders = RepositoryFiles().Where(f => f.Contains('/') && !f.StartsWith('.')).Select(f => f[..f.IndexOf('/')]).Distinct().Order().ToList();
        Assert.That(listed, Is.EqualTo(folders), "README.md's layout table against the top-level folders in the repository");
    }
}
