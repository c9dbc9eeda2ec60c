using Microsoft.ML.OnnxRuntime;

namespace XLstmOnnx.Runtime;

/// <summary>
/// Finds and registers the mLSTM custom-op library (libxlstm_customops.so, built from customops/: domain "ai.xlstm",
/// CPU kernels and, when built with a CUDA toolkit, CUDA kernels) for models exported with
/// <c>--mlstm-kernels custom</c>. Looked up in XLSTM_CUSTOMOPS_PATH (a file; when set it must exist), then beside the
/// application and beside this assembly (the build copies it there). ONNX Runtime owns the loaded library for the
/// life of the SessionOptions it is registered with (RegisterCustomOpLibrary, ORT ≥ 1.15).
/// </summary>
public static class CustomOpLibrary
{
    public const string EnvironmentVariable = "XLSTM_CUSTOMOPS_PATH";
    public const string FileName = "libxlstm_customops.so";

    /// <summary>What to do when the library is missing; part of every "not found" message.</summary>
    public const string BuildHint =
        "Build it with './build.sh --target=Build' (the CMake project customops/, needs cmake and g++; it is copied beside "
        + "the runtime, CLI and tests), or by hand: cmake -S customops -B customops/build && cmake --build customops/build, "
        + $"then set {EnvironmentVariable}=customops/build/{FileName}. Or re-export the model with ExportOptions.MLstmKernels Onnx.";

    /// <summary>The library's path, or null when it is not built. Throws when XLSTM_CUSTOMOPS_PATH names a missing file.</summary>
    public static string? Find() =>
        Find(Environment.GetEnvironmentVariable(EnvironmentVariable), SearchFolders());

    /// <summary>Registers the library with <paramref name="options"/>; throws saying what to build when it is missing.</summary>
    public static void Register(SessionOptions options, string modelDir)
    {
        ArgumentNullException.ThrowIfNull(options);
        string? path;
        try
        {
            path = Find();
        }
        catch (XLstmOnnxException e)
        {
            throw new XLstmOnnxException($"{modelDir}: the model uses the mLSTM custom ops (domain ai.xlstm): {e.Message}", e);
        }
        if (path is null)
        {
            throw new XLstmOnnxException(
                $"{modelDir}: the model uses the mLSTM custom ops (domain ai.xlstm), but {FileName} was not found beside "
                + $"{string.Join(" or ", SearchFolders().Distinct())} and {EnvironmentVariable} is not set. {BuildHint}");
        }
        try
        {
            options.RegisterCustomOpLibrary(path);
        }
        catch (OnnxRuntimeException e)
        {
            throw new XLstmOnnxException(
                $"{modelDir}: ONNX Runtime could not load the mLSTM custom-op library {path}: {e.Message} "
                + $"(it must be built for this platform against ONNX Runtime 1.31). {BuildHint}", e);
        }
    }

    /// <summary>The lookup itself: <paramref name="environmentValue"/> (XLSTM_CUSTOMOPS_PATH) first, then each folder.</summary>
    internal static string? Find(string? environmentValue, IEnumerable<string> folders)
    {
        if (!string.IsNullOrEmpty(environmentValue))
        {
            if (File.Exists(environmentValue)) return Path.GetFullPath(environmentValue);
            throw new XLstmOnnxException(
                $"{EnvironmentVariable} is set to '{environmentValue}', but no such file exists. {BuildHint}");
        }
        foreach (var folder in folders)
        {
            string candidate = Path.Combine(folder, FileName);
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }

    private static IEnumerable<string> SearchFolders()
    {
        yield return AppContext.BaseDirectory;
        if (Path.GetDirectoryName(typeof(CustomOpLibrary).Assembly.Location) is { Length: > 0 } beside) yield return beside;
    }
}
