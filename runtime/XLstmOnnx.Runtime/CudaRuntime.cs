using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;

namespace XLstmOnnx.Runtime;

/// <summary>
/// The few CUDA runtime calls the decode loop needs that ONNX Runtime's managed API lacks: small copies between host
/// arrays and device tensors (token ids in, next-token ids or logits out). The same
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
            GetErrorString = (delegate* unmanaged<int, IntPtr>)NativeLibrary.GetExport(lib, "cudaGetErrorString"),
        };
        return _api;
    }

    /// <summary>Throws naming the call and CUDA's error; the message is only built on failure (this is per-token code).</summary>
    private static void Check(int status, string call, int deviceId)
    {
        if (status == 0) return;
        string text = Marshal.PtrToStringAnsi(Load().GetErrorString(status)) ?? "unknown error";
        throw new XLstmOnnxException($"CUDA {call} on device {deviceId} failed with error {status}: {text}.");
    }

    /// <summary>
    /// Copies <paramref name="source"/> into <paramref name="dest"/> (same byte size) and waits until it has landed: a
    /// pageable copy may still be in flight when cudaMemcpy returns, and ONNX Runtime's stream does not order itself
    /// after the legacy stream. The device is selected on every call: the calling thread (a server's decode loop, say)
    /// may not be the one that made the tensor.
    /// </summary>
    public static void CopyToDevice<T>(ReadOnlySpan<T> source, DeviceBuffer dest) where T : unmanaged
    {
        var api = Load();
        Check(api.SetDevice(dest.DeviceId), "cudaSetDevice", dest.DeviceId);
        nuint bytes = CheckSize<T>(source.Length, dest);
        fixed (T* s = source) Check(api.Memcpy((void*)dest.Address, s, bytes, HostToDevice), "cudaMemcpy (host to device)", dest.DeviceId);
        Check(api.DeviceSynchronize(), "cudaDeviceSynchronize", dest.DeviceId);
    }

    /// <summary>Copies <paramref name="source"/> into <paramref name="dest"/> (same byte size; synchronous).</summary>
    public static void CopyToHost<T>(DeviceBuffer source, Span<T> dest) where T : unmanaged
    {
        var api = Load();
        Check(api.SetDevice(source.DeviceId), "cudaSetDevice", source.DeviceId);
        nuint bytes = CheckSize<T>(dest.Length, source);
        fixed (T* d = dest) Check(api.Memcpy(d, (void*)source.Address, bytes, DeviceToHost), "cudaMemcpy (device to host)", source.DeviceId);
    }

    private static nuint CheckSize<T>(int count, DeviceBuffer buffer) where T : unmanaged
    {
        long bytes = (long)count * sizeof(T);
        if (bytes != buffer.Bytes) throw new ArgumentException($"copy of {bytes} bytes into or out of a device buffer of {buffer.Bytes} bytes");
        return (nuint)bytes;
    }
}

/// <summary>
/// Where a device tensor's bytes are, read once when it is made (a step's copies then touch no managed object). The
/// tensor keeps the memory: the buffer is valid while it lives.
/// </summary>
internal readonly record struct DeviceBuffer(IntPtr Address, long Bytes, int DeviceId)
{
    public static unsafe DeviceBuffer Of(OrtValue tensor, int deviceId) => new(
        // the span is only used for its address: device memory is never read from the host
        (IntPtr)Unsafe.AsPointer(ref MemoryMarshal.GetReference(tensor.GetTensorMutableRawData())), (long)tensor.GetTensorSizeInBytes(), deviceId);
}
