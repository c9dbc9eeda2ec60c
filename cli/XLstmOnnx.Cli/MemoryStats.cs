namespace XLstmOnnx.Cli;

/// <summary>Process memory from /proc/self/status (Linux); 0 elsewhere.</summary>
internal static class MemoryStats
{
    /// <summary>Resident anonymous memory now (heap, buffers), excluding file-backed mapped pages.</summary>
    public static long AnonymousBytes() => Read("RssAnon:");

    /// <summary>Peak resident set size (VmHWM), mapped file pages included.</summary>
    public static long PeakRssBytes() => Read("VmHWM:");

    private static long Read(string key)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
            {
                if (line.StartsWith(key, StringComparison.Ordinal))
                {
                    return long.Parse(line[key.Length..].Trim().Split(' ')[0]) * 1024;
                }
            }
        }
        catch (IOException)
        {
        }
        return 0;
    }
}
