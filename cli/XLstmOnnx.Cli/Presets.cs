using XLstmOnnx.GraphBuilder.Config;

namespace XLstmOnnx.Cli;

/// <summary>Model configs by name: models/presets/NAME.json, copied beside the tool at build time.</summary>
internal static class Presets
{
    private static string Folder => Path.Combine(AppContext.BaseDirectory, "presets");

    public static IEnumerable<string> Names =>
        Directory.Exists(Folder) ? Directory.EnumerateFiles(Folder, "*.json").Select(f => Path.GetFileNameWithoutExtension(f)!).Order(StringComparer.Ordinal) : [];

    public static XLstmConfig Load(string name)
    {
        string path = Path.Combine(Folder, name + ".json");
        if (!File.Exists(path)) throw new XLstmOnnxException($"option --preset: unknown preset \"{name}\". Known: {string.Join(", ", Names)}.");
        return XLstmConfig.Load(path);
    }
}
