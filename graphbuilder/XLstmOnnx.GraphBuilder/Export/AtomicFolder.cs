using System.Text.RegularExpressions;

namespace XLstmOnnx.GraphBuilder.Export;

/// <summary>
/// Writes a folder atomically: files go into a hidden sibling, <c>.NAME.partial-GUID</c>, which replaces the target by
/// renames at the end (the old target goes to <c>.NAME.old-GUID</c> and is deleted). A target that exists must be empty
/// or hold nothing but a previous export (only names in the caller's list); anything else is refused and named.
/// <para>
/// The staging folder holds <see cref="LockFile"/>, opened exclusively for the whole write (an advisory lock that dies
/// with the process, even under SIGKILL). The next export to the same target removes every sibling staging folder
/// whose lock nobody holds, and every leftover <c>.old-</c> folder: what a killed export left behind.
/// </para>
/// Owns the lock; <see cref="Dispose"/> without <see cref="Commit"/> removes the staging folder.
/// </summary>
internal sealed class AtomicFolder : IDisposable
{
    /// <summary>Held open, exclusively, inside the staging folder while the export writes.</summary>
    public const string LockFile = ".xlstm-onnx-export.lock";
    /// <summary>Staging folders without a lock file (older versions, or killed before the lock was taken) count as stale after this.</summary>
    private static readonly TimeSpan UnlockedGrace = TimeSpan.FromMinutes(1);
    /// <summary>Entries of a foreign folder named in an error; the rest are counted.</summary>
    private const int NamedEntries = 10;

    private FileStream? _lock;
    private bool _committed;

    private AtomicFolder(string target, string staging, FileStream lockStream)
    {
        Target = target;
        Staging = staging;
        _lock = lockStream;
    }

    /// <summary>The folder that appears at <see cref="Commit"/>.</summary>
    public string Target { get; }

    /// <summary>Where the files are written meanwhile.</summary>
    public string Staging { get; }

    /// <summary>
    /// Checks <paramref name="target"/> (a new path, an empty folder, or a folder holding only <paramref name="ownNames"/>
    /// with <paramref name="marker"/> among them), removes stale staging folders of earlier writes to it, and creates
    /// a locked staging folder beside it.
    /// </summary>
    public static AtomicFolder Begin(string target, IReadOnlyCollection<string> ownNames, string marker)
    {
        string parent = Path.GetDirectoryName(target) ?? throw new XLstmOnnxException($"{target}: output folder has no parent folder.");
        if (File.Exists(target)) throw new XLstmOnnxException($"{target}: the output path is a file; expected a folder to write the model into.");
        if (Directory.Exists(target)) CheckReplaceable(target, ownNames, marker);
        if (Directory.Exists(parent)) RemoveStale(parent, Path.GetFileName(target));
        string staging = Path.Combine(parent, $".{Path.GetFileName(target)}.partial-{Guid.NewGuid():N}");
        FileStream? lockStream = null;
        try
        {
            Directory.CreateDirectory(parent);
            Directory.CreateDirectory(staging);
            // the lock also probes that the folder is writable: fail now, not after minutes of writing
            lockStream = new FileStream(Path.Combine(staging, LockFile), FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
            return new AtomicFolder(target, staging, lockStream);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            lockStream?.Dispose();
            Delete(staging);
            throw new XLstmOnnxException($"{target}: cannot write the output folder ({e.Message}).", e);
        }
    }

    /// <summary>Moves the staging folder into place (replacing the previous export) and releases the lock.</summary>
    public void Commit()
    {
        string? old = null;
        if (Directory.Exists(Target))
        {
            old = Path.Combine(Path.GetDirectoryName(Target)!, $".{Path.GetFileName(Target)}.old-{Guid.NewGuid():N}");
            Directory.Move(Target, old);
        }
        Directory.Move(Staging, Target);
        _committed = true;
        // the lock moved with the folder (a rename keeps open files open); drop it now that the folder is in place
        File.Delete(Path.Combine(Target, LockFile));
        _lock!.Dispose();
        _lock = null;
        if (old is not null) Delete(old);
    }

    /// <summary>Removes the staging folder unless it was committed, and releases the lock.</summary>
    public void Dispose()
    {
        _lock?.Dispose();
        _lock = null;
        if (!_committed) Delete(Staging);
    }

    /// <summary>Refuses a folder that holds anything but a previous export: every entry must be one of <paramref name="ownNames"/>.</summary>
    private static void CheckReplaceable(string target, IReadOnlyCollection<string> ownNames, string marker)
    {
        var entries = Directory.EnumerateFileSystemEntries(target).Select(e => Path.GetFileName(e)!).Order(StringComparer.Ordinal).ToList();
        if (entries.Count == 0) return;
        var foreign = entries.Where(e => !ownNames.Contains(e) || Directory.Exists(Path.Combine(target, e))).ToList();
        if (!entries.Contains(marker))
        {
            throw new XLstmOnnxException($"{target}: output folder exists and is not an XLstmOnnx export ({marker} missing; it holds {Name(entries)}); "
                + "choose a new or empty folder.");
        }
        if (foreign.Count > 0)
        {
            throw new XLstmOnnxException($"{target}: output folder holds a previous export and {foreign.Count} foreign "
                + $"entr{(foreign.Count == 1 ? "y" : "ies")}, which replacing it would delete: {Name(foreign)}. Move them away or choose another folder.");
        }
    }

    private static string Name(IReadOnlyList<string> entries) =>
        string.Join(", ", entries.Take(NamedEntries)) + (entries.Count > NamedEntries ? $" and {entries.Count - NamedEntries} more" : "");

    /// <summary>Removes <c>.NAME.partial-GUID</c> folders whose lock nobody holds, and <c>.NAME.old-GUID</c> folders, beside the target.</summary>
    private static void RemoveStale(string parent, string name)
    {
        var pattern = new Regex($"^\\.{Regex.Escape(name)}\\.(partial|old)-[0-9a-f]{{32}}$", RegexOptions.CultureInvariant);
        IEnumerable<string> candidates;
        try
        {
            candidates = Directory.EnumerateDirectories(parent).Where(d => pattern.IsMatch(Path.GetFileName(d))).ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return; // an unreadable parent fails below, with the path
        }
        foreach (string dir in candidates)
        {
            bool partial = Path.GetFileName(dir).Contains(".partial-", StringComparison.Ordinal);
            if (partial && !IsAbandoned(dir)) continue; // another export is writing it
            Delete(dir);
        }
    }

    /// <summary>Whether no live export holds <paramref name="staging"/>'s lock.</summary>
    private static bool IsAbandoned(string staging)
    {
        string lockPath = Path.Combine(staging, LockFile);
        try
        {
            if (!File.Exists(lockPath)) return DateTime.UtcNow - Directory.GetLastWriteTimeUtc(staging) > UnlockedGrace;
            using var probe = new FileStream(lockPath, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false; // locked (or unreadable): leave it
        }
    }

    private static void Delete(string dir)
    {
        try
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // best effort: a hidden .partial or .old folder is harmless, names itself, and the next export retries
        }
    }
}
