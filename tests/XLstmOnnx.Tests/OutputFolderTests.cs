using XLstmOnnx.GraphBuilder.Export;

namespace XLstmOnnx.Tests;

/// <summary>Outputs appear atomically; a failed or cancelled export leaves nothing behind.</summary>
[TestFixture]
public class OutputFolderTests
{
    private static string Fixture => Path.Combine(TestPaths.Fixtures, "single_basic");

    [Test]
    public void OutputPathThatCannotBeCreated()
    {
        using var tmp = TestPaths.Temp();
        File.WriteAllText(tmp.Sub("a-file"), "x");
        var e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(Fixture, Path.Combine(tmp.Sub("a-file"), "model"), new ExportOptions()));
        Assert.That(e!.Message, Does.Contain("a-file").And.Contain("cannot write the output folder"));
    }

    [Test]
    public void OutputPathIsAFile()
    {
        using var tmp = TestPaths.Temp();
        File.WriteAllText(tmp.Sub("model"), "x");
        var e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(Fixture, tmp.Sub("model"), new ExportOptions()));
        Assert.That(e!.Message, Does.Contain("is a file"));
    }

    [Test]
    public void RefusesToOverwriteAForeignFolder()
    {
        using var tmp = TestPaths.Temp();
        Directory.CreateDirectory(tmp.Sub("model"));
        File.WriteAllText(Path.Combine(tmp.Sub("model"), "notes.txt"), "mine");
        var e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(Fixture, tmp.Sub("model"), new ExportOptions()));
        Assert.That(e!.Message, Does.Contain("not an XLstmOnnx export"));
        Assert.That(File.ReadAllText(Path.Combine(tmp.Sub("model"), "notes.txt")), Is.EqualTo("mine"));
    }

    [Test]
    public void ReplacesAPreviousExportWhole()
    {
        using var tmp = TestPaths.Temp();
        OnnxExporter.Export(Fixture, tmp.Sub("model"), new ExportOptions { ExternalData = ExternalDataMode.Always });
        Assert.That(File.Exists(Path.Combine(tmp.Sub("model"), OnnxExporter.DataFile)));
        OnnxExporter.Export(Fixture, tmp.Sub("model"), new ExportOptions());
        Assert.That(File.Exists(Path.Combine(tmp.Sub("model"), OnnxExporter.DataFile)), Is.False, "no stale data file from the earlier export");
        Assert.That(Directory.GetFileSystemEntries(tmp.Path), Has.Length.EqualTo(1), "no staging folders left");
    }

    [Test]
    public void CancelledExportLeavesNothing()
    {
        using var tmp = TestPaths.Temp();
        using var cts = new CancellationTokenSource();
        var progress = new SyncProgress(_ => cts.Cancel()); // cancel after the first tensor is written
        Assert.Throws<OperationCanceledException>(() => OnnxExporter.Export(Fixture, tmp.Sub("model"),
            new ExportOptions { ExternalData = ExternalDataMode.Always }, progress, cts.Token));
        Assert.That(Directory.GetFileSystemEntries(tmp.Path), Is.Empty, "neither the model folder nor a staging folder exists");
    }

    private sealed class SyncProgress(Action<ExportProgress> a) : IProgress<ExportProgress>
    {
        public void Report(ExportProgress value) => a(value);
    }
}
