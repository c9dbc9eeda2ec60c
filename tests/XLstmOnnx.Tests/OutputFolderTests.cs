using System.Diagnostics;
using System.Runtime.InteropServices;
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
        Assert.That(e!.Message, Does.Contain("not an XLstmOnnx export").And.Contain("notes.txt"));
        Assert.That(File.ReadAllText(Path.Combine(tmp.Sub("model"), "notes.txt")), Is.EqualTo("mine"));
    }

    [Test]
    public void RefusesToReplaceAnExportThatHoldsTheUsersFiles()
    {
        using var tmp = TestPaths.Temp();
        string model = tmp.Sub("model");
        OnnxExporter.Export(Fixture, model, new ExportOptions());
        File.WriteAllText(Path.Combine(model, "notes.txt"), "mine");
        Directory.CreateDirectory(Path.Combine(model, "runs"));
        File.WriteAllText(Path.Combine(model, "runs", "bench.json"), "{}");
        var e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(Fixture, model, new ExportOptions()))!;
        Assert.That(e.Message, Does.Contain(model).And.Contain("2 foreign entries").And.Contain("notes.txt, runs"));
        Assert.That(File.ReadAllText(Path.Combine(model, "notes.txt")), Is.EqualTo("mine"));
        Assert.That(File.Exists(Path.Combine(model, "runs", "bench.json")));
        Assert.That(Directory.GetFileSystemEntries(tmp.Path), Is.EqualTo(new[] { model }), "no staging folder left");
        // a folder named like one of our files is not ours either
        File.Delete(Path.Combine(model, "notes.txt"));
        Directory.Delete(Path.Combine(model, "runs"), recursive: true);
        File.Delete(Path.Combine(model, "generation_config.json"));
        Directory.CreateDirectory(Path.Combine(model, "generation_config.json"));
        e = Assert.Throws<XLstmOnnxException>(() => OnnxExporter.Export(Fixture, model, new ExportOptions()))!;
        Assert.That(e.Message, Does.Contain("1 foreign entry").And.Contain("generation_config.json"));
    }

    [Test]
    public void StalePartialFoldersOfKilledExportsAreRemovedLiveOnesKept()
    {
        using var tmp = TestPaths.Temp();
        string model = tmp.Sub("model");
        // what SIGKILL leaves: a staging folder whose lock file nobody holds (and a previous version's, without a lock)
        string killed = tmp.Sub($".model.partial-{Guid.NewGuid():N}");
        Directory.CreateDirectory(killed);
        File.WriteAllText(Path.Combine(killed, AtomicFolder.LockFile), "");
        File.WriteAllBytes(Path.Combine(killed, OnnxExporter.DataFile), new byte[1000]);
        string older = tmp.Sub($".model.partial-{Guid.NewGuid():N}");
        Directory.CreateDirectory(older);
        File.WriteAllBytes(Path.Combine(older, OnnxExporter.DataFile), new byte[1000]);
        Directory.SetLastWriteTimeUtc(older, DateTime.UtcNow.AddHours(-1));
        string oldCommit = tmp.Sub($".model.old-{Guid.NewGuid():N}");
        Directory.CreateDirectory(oldCommit);
        // another export writing now: its lock is held
        string live = tmp.Sub($".model.partial-{Guid.NewGuid():N}");
        Directory.CreateDirectory(live);
        using (new FileStream(Path.Combine(live, AtomicFolder.LockFile), FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None))
        {
            // someone else's folders that look alike are not ours
            string other = tmp.Sub($".other.partial-{Guid.NewGuid():N}");
            Directory.CreateDirectory(other);
            OnnxExporter.Export(Fixture, model, new ExportOptions());
            Assert.That(Directory.GetFileSystemEntries(tmp.Path).Order(), Is.EqualTo(new[] { live, model, other }.Order()));
        }
        OnnxExporter.Export(Fixture, model, new ExportOptions());
        Assert.That(Directory.Exists(live), Is.False, "its export has ended (lock released): the next export removes it");
        Assert.That(File.Exists(Path.Combine(model, AtomicFolder.LockFile)), Is.False, "the lock does not stay in the export");
    }

    [TestCase("TERM")]
    [TestCase("INT")]
    public void ASignalDuringExportRemovesItsPartialFolder(string signal)
    {
        using var tmp = TestPaths.Temp();
        string model = tmp.Sub("model");
        // 7B width, one block: seconds of writing, long enough to be interrupted in the middle
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "exec", Path.Combine(AppContext.BaseDirectory, "xlstm-onnx.dll"), "export", "--random-weights", "--preset", "xlstm-7b",
            "--num-blocks", "1", "--external-data", "always", "--output", model })
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var clock = Stopwatch.StartNew();
        string? data = null;
        while (data is null && !p.HasExited && clock.Elapsed < TimeSpan.FromSeconds(60))
        {
            data = Directory.EnumerateDirectories(tmp.Path, ".model.partial-*").Select(d => Path.Combine(d, OnnxExporter.DataFile))
                .FirstOrDefault(f => File.Exists(f) && new FileInfo(f).Length > 0);
            Thread.Sleep(20);
        }
        Assert.That(data, Is.Not.Null, "the export was writing weights");
        Assert.That(Kill(p.Id, signal == "TERM" ? 15 : 2), Is.Zero);
        Assert.That(p.WaitForExit(60_000), "the export stops");
        Assert.That(p.ExitCode, Is.EqualTo(signal == "TERM" ? 143 : 130), stderr.Result);
        Assert.That(stderr.Result, Does.Contain($"stopped by SIG{signal}"));
        Assert.That(Directory.GetFileSystemEntries(tmp.Path), Is.Empty, "neither the model nor its staging folder is left: " + stdout.Result);
    }

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);

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
