namespace XLstmOnnx.Tests;

/// <summary>Where the repository's test data lives, found from the test assembly's folder.</summary>
internal static class TestPaths
{
    public static string RepoRoot { get; } = FindRoot();

    public static string Fixtures => Path.Combine(RepoRoot, "tests", "fixtures");

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
