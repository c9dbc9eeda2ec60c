namespace XLstmOnnx.Runtime;

/// <summary>Where a model runs.</summary>
public enum ExecutionDevice
{
    Cpu,
    Cuda,
}

/// <summary>How a model is loaded: execution provider, device and threads.</summary>
public sealed record RuntimeOptions
{
    public ExecutionDevice Device { get; init; } = ExecutionDevice.Cpu;
    /// <summary>CUDA device ordinal.</summary>
    public int DeviceId { get; init; }
    /// <summary>Intra-op threads; 0 lets ONNX Runtime choose.</summary>
    public int Threads { get; init; }
    /// <summary>
    /// Capture each decode step as a CUDA graph and replay it (CUDA only; models exported with --mlstm-kernels custom,
    /// since Loop nodes cannot be captured). Two graphs alternate with the two state buffer sets; prompts run uncaptured.
    /// The session then fails to load when any node would run outside the CUDA EP.
    /// </summary>
    public bool CudaGraph { get; init; }
    /// <summary>Write ONNX Runtime's per-node profile (JSON) under this path prefix; null: off. Costs time: not for timed runs.</summary>
    public string? ProfilePrefix { get; init; }

    /// <summary>Throws naming the parameter (<c>RuntimeOptions.Threads</c>), expected and found when a value is out of range.</summary>
    public void Validate()
    {
        if (!Enum.IsDefined(Device)) throw XLstmOnnxException.MustBe(Name(nameof(Device)), "cpu or cuda", (int)Device);
        if (DeviceId < 0) throw XLstmOnnxException.MustBe(Name(nameof(DeviceId)), "a device ordinal (0 or more)", DeviceId);
        if (Threads < 0) throw XLstmOnnxException.MustBe(Name(nameof(Threads)), "0 (ONNX Runtime's choice) or positive", Threads);
    }

    /// <summary>Parses "cpu" or "cuda", any case, to <see cref="Device"/>; throws naming it and the valid names.</summary>
    public static ExecutionDevice ParseDevice(string name) => name.ToLowerInvariant() switch
    {
        "cpu" => ExecutionDevice.Cpu,
        "cuda" => ExecutionDevice.Cuda,
        _ => throw XLstmOnnxException.MustBe(Name(nameof(Device)), "cpu or cuda", name),
    };

    /// <summary>The API name of property <paramref name="property"/>, as errors give it: <c>RuntimeOptions.Device</c>.</summary>
    public static string Name(string property) => $"{nameof(RuntimeOptions)}.{property}";
}
