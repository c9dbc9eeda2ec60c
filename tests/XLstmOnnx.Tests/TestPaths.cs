namespace XLstmOnnx.Tests;

/// <summary>Where the repository's test data lives, found from the test assembly's folder.</summary>
internal static class TestPaths
{
    public static string RepoRoot { get; } = FindRoot();

    public static string Fixtures => Path.Combine(RepoRoot, "tests", "fixtures");

    /// <summary>../shared/data beside the repository (the NeoX tokenizer, data too large for the repository).</summary>
    public static string SharedData => Path.Combine(RepoRoot, "..", "shared", "data");

    /// <summary>
    /// Whether a test that needs ../shared must fail when it is missing: in CI (CI=true, which the CI machine sets, or
    /// XLSTM_REQUIRE_SHARED=1, which .ci/run sets) ../shared is always there, so its absence is a broken setup, not a
    /// reason to skip; a developer machine without it skips, saying why.
    /// </summary>
    public static bool SharedRequired(Func<string, string?> environment) =>
        environment("XLSTM_REQUIRE_SHARED") == "1" || string.Equals(environment("CI"), "true", StringComparison.OrdinalIgnoreCase);

    /// <summary>Fails (CI) or skips (a developer machine) a test whose ../shared input is missing; never returns.</summary>
    public static void SharedMissing(string what)
    {
        if (SharedRequired(Environment.GetEnvironmentVariable))
        {
            Assert.Fail($"{what} is missing, and this run requires ../shared (CI or XLSTM_REQUIRE_SHARED=1): {SharedData}");
        }
        Assert.Ignore($"{what} is missing: skipped on this machine (CI and XLSTM_REQUIRE_SHARED=1 make it a failure).");
    }

    /// <summary>A fresh temporary folder under the system temp dir; deleted by <see cref="TempDir.Dispose"/>.</summary>
    public static TempDir Temp() => new();

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "XLstmOnnx.sln"))) return d.FullName;
        }
        throw new InvalidOperationException($"XLstmOnnx.sln not found above {AppContext.BaseDirectory}");
    }
}

internal sealed class TempDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"xlstm-onnx-test-{Guid.NewGuid():N}");

    public TempDir() => Directory.CreateDirectory(Path);

    public string Sub(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        if (Directory.Exists(Path)) Directory.Delete(Path, recursive: true);
    }
}
