using Microsoft.ML.OnnxRuntime;

namespace XLstmOnnx.Runtime;

/// <summary>
/// Finds and registers the mLSTM custom-op library (libxlstm_customops.so, built from customops/) for models exported
/// with <c>--mlstm-kernels custom</c>. Looked up in XLSTM_CUSTOMOPS_PATH (a file), then beside this assembly.
/// ONNX Runtime owns the loaded library for the life of the SessionOptions it is registered with.
/// </summary>
public static class CustomOpLibrary
{
    public const string EnvironmentVariable = "XLSTM_CUSTOMOPS_PATH";
    public const string FileName = "libxlstm_customops.so";

    /// <summary>The library's path, or null when it is not built.</summary>
    public static string? Find()
    {
        if (Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } env && File.Exists(env)) return env;
        string beside = Path.Combine(AppContext.BaseDirectory, FileName);
        return File.Exists(beside) ? beside : null;
    }

    /// <summary>Registers the library with <paramref name="options"/>; throws saying what to build when it is missing.</summary>
    public static void Register(SessionOptions options, string modelDir)
    {
        string path = Find() ?? throw new XLstmOnnxException(
            $"{modelDir}: the model uses the mLSTM custom ops, but {FileName} was not found (set {EnvironmentVariable} or put it beside "
            + $"{Path.GetFileName(typeof(CustomOpLibrary).Assembly.Location)}). Build it with './build.sh --target=Build' (CMake project customops/), "
            + "or re-export with '--mlstm-kernels onnx'.");
        options.RegisterCustomOpLibrary(path);
    }
}
