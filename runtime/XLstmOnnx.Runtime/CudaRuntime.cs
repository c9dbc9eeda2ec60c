using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;

namespace XLstmOnnx.Runtime;

/// <summary>
/// The few CUDA runtime calls the decode loop needs that ONNX Runtime's managed API lacks: small copies between host
/// arrays and device tensors (token ids in, next-token ids or logits out) and the device's memory use. The same
/// libcudart that ONNX Runtime's CUDA provider loads is resolved by name, so both share the primary context.
/// </summary>
internal static unsafe class CudaRuntime
{
    private const int HostToDevice = 1, DeviceToHost = 2;
    private static readonly string[] Names = ["libcudart.so.13", "libcudart.so"];
    private static Api? _api;

    private sealed class Api
    {
        public delegate* unmanaged<void*, void*, nuint, int, int> Memcpy;
        public delegate* unmanaged<int> DeviceSynchronize;
        public delegate* unmanaged<int, int> SetDevice;
        public delegate* unmanaged<nuint*, nuint*, int> MemGetInfo;
        public delegate* unmanaged<int, IntPtr> GetErrorString;
    }

    private static Api Load()
    {
        if (_api is not null) return _api;
        IntPtr lib = IntPtr.Zero;
        foreach (var name in Names)
        {
            if (NativeLibrary.TryLoad(name, out lib)) break;
        }
        if (lib == IntPtr.Zero)
        {
            throw new XLstmOnnxException($"the CUDA runtime ({string.Join(" or ", Names)}) could not be loaded; put the CUDA 13 libraries on LD_LIBRARY_PATH.");
        }
        _api = new Api
        {
            Memcpy = (delegate* unmanaged<void*, void*, nuint, int, int>)NativeLibrary.GetExport(lib, "cudaMemcpy"),
            DeviceSynchronize = (delegate* unmanaged<int>)NativeLibrary.GetExport(lib, "cudaDeviceSynchronize"),
            SetDevice = (delegate* unmanaged<int, int>)NativeLibrary.GetExport(lib, "cudaSetDevice"),
            MemGetInfo = (delegate* unmanaged<nuint*, nuint*, int>)NativeLibrary.GetExport(lib, "cudaMemGetInfo"),
            GetErrorString = (delegate* unmanaged<int, IntPtr>)NativeLibrary.GetExport(lib, "cudaGetErrorString"),
        };
        return _api;
    }

    private static void Check(int status, string what)
    {
        if (status == 0) return;
        string text = Marshal.PtrToStringAnsi(Load().GetErrorString(status)) ?? "unknown error";
        throw new XLstmOnnxException($"CUDA {what} failed with error {status}: {text}.");
    }

    /// <summary>Selects <paramref name="deviceId"/> for this thread's later calls (ONNX Runtime's device).</summary>
    public static void SetDevice(int deviceId) => Check(Load().SetDevice(deviceId), $"cudaSetDevice({deviceId})");

    /// <summary>
    /// Copies <paramref name="source"/> into the device tensor <paramref name="dest"/> (same byte size) and waits until it
    /// has landed: a pageable copy may still be in flight when cudaMemcpy returns, and ONNX Runtime's stream does not
    /// order itself after the legacy stream.
    /// </summary>
    public static void CopyToDevice<T>(ReadOnlySpan<T> source, OrtValue dest) where T : unmanaged
    {
        var api = Load();
        nuint bytes = (nuint)(source.Length * sizeof(T));
        CheckSize(bytes, dest);
        fixed (T* s = source) Check(api.Memcpy(DevicePointer(dest), s, bytes, HostToDevice), "cudaMemcpy host to device");
        Check(api.DeviceSynchronize(), "cudaDeviceSynchronize");
    }

    /// <summary>Copies the device tensor <paramref name="source"/> into <paramref name="dest"/> (same byte size; synchronous).</summary>
    public static void CopyToHost<T>(OrtValue source, Span<T> dest) where T : unmanaged
    {
        var api = Load();
        nuint bytes = (nuint)(dest.Length * sizeof(T));
        CheckSize(bytes, source);
        fixed (T* d = dest) Check(api.Memcpy(d, DevicePointer(source), bytes, DeviceToHost), "cudaMemcpy device to host");
    }

    /// <summary>Bytes in use on the current device (total − free), all processes; -1 when CUDA is not there.</summary>
    public static long DeviceBytesUsed()
    {
        try
        {
            nuint free, total;
            return Load().MemGetInfo(&free, &total) == 0 ? (long)(total - free) : -1;
        }
        catch (XLstmOnnxException)
        {
            return -1;
        }
    }

    private static void CheckSize(nuint bytes, OrtValue tensor)
    {
        long have = (long)tensor.GetTensorSizeInBytes();
        if ((long)bytes != have) throw new ArgumentException($"copy of {bytes} bytes into or out of a device tensor of {have} bytes");
    }

    /// <summary>The tensor's device address (the span is only used for its address, never dereferenced).</summary>
    internal static void* DevicePointer(OrtValue tensor) =>
        Unsafe.AsPointer(ref MemoryMarshal.GetReference(tensor.GetTensorMutableRawData()));
}
