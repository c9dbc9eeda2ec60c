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
    private const int HostToDevice = 1, DeviceToHost = 2, DeviceToDevice = 3;
    private static readonly string[] Names = ["libcudart.so.13", "libcudart.so"];
    private static Api? _api;

    private sealed class Api
    {
        public delegate* unmanaged<void*, void*, nuint, int, int> Memcpy;
        public delegate* unmanaged<void*, void*, nuint, int, IntPtr, int> MemcpyAsync;
        public delegate* unmanaged<void*, nuint, void*, nuint, nuint, nuint, int, IntPtr, int> Memcpy2DAsync;
        public delegate* unmanaged<void*, int, nuint, IntPtr, int> MemsetAsync;
        public delegate* unmanaged<void*, nuint, int, nuint, nuint, IntPtr, int> Memset2DAsync;
        public delegate* unmanaged<void**, nuint, int> Malloc;
        public delegate* unmanaged<void*, int> Free;
        public delegate* unmanaged<nuint*, nuint*, int> MemGetInfo;
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
            MemcpyAsync = (delegate* unmanaged<void*, void*, nuint, int, IntPtr, int>)NativeLibrary.GetExport(lib, "cudaMemcpyAsync"),
            Memcpy2DAsync = (delegate* unmanaged<void*, nuint, void*, nuint, nuint, nuint, int, IntPtr, int>)NativeLibrary.GetExport(lib, "cudaMemcpy2DAsync"),
            MemsetAsync = (delegate* unmanaged<void*, int, nuint, IntPtr, int>)NativeLibrary.GetExport(lib, "cudaMemsetAsync"),
            Memset2DAsync = (delegate* unmanaged<void*, nuint, int, nuint, nuint, IntPtr, int>)NativeLibrary.GetExport(lib, "cudaMemset2DAsync"),
            Malloc = (delegate* unmanaged<void**, nuint, int>)NativeLibrary.GetExport(lib, "cudaMalloc"),
            Free = (delegate* unmanaged<void*, int>)NativeLibrary.GetExport(lib, "cudaFree"),
            MemGetInfo = (delegate* unmanaged<nuint*, nuint*, int>)NativeLibrary.GetExport(lib, "cudaMemGetInfo"),
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

    // Device-side work of the runtime's own (state rows, prefix cache, sampler buffers). Every call below is enqueued on the
    // legacy default stream and ordered by the host: ONNX Runtime's calls have returned (their outputs synchronized)
    // before any of these is enqueued, and Synchronize is called before the next ONNX Runtime call reads what they wrote.

    /// <summary>cudaMalloc of <paramref name="bytes"/> on <paramref name="deviceId"/>; throws naming what it was for and the free memory.</summary>
    public static IntPtr Malloc(long bytes, int deviceId, string what)
    {
        var api = Load();
        Check(api.SetDevice(deviceId), "cudaSetDevice", deviceId);
        void* p = null;
        int status = api.Malloc(&p, (nuint)bytes);
        if (status != 0)
        {
            var (free, total) = MemoryInfo(deviceId);
            throw new XLstmOnnxException($"{what}: {DeviceMemory.Mib(bytes)} of GPU memory could not be allocated on device {deviceId} "
                + $"({DeviceMemory.Mib(free)} free of {DeviceMemory.Mib(total)}; CUDA error {status}).");
        }
        return (IntPtr)p;
    }

    /// <summary>cudaFree (waits for the device, as cudaFree does).</summary>
    public static void Free(IntPtr p, int deviceId)
    {
        var api = Load();
        Check(api.SetDevice(deviceId), "cudaSetDevice", deviceId);
        Check(api.Free((void*)p), "cudaFree", deviceId);
    }

    /// <summary>Free and total bytes of the device's memory.</summary>
    public static (long Free, long Total) MemoryInfo(int deviceId)
    {
        var api = Load();
        Check(api.SetDevice(deviceId), "cudaSetDevice", deviceId);
        nuint free = 0, total = 0;
        Check(api.MemGetInfo(&free, &total), "cudaMemGetInfo", deviceId);
        return ((long)free, (long)total);
    }

    /// <summary>Enqueues a copy within device memory.</summary>
    public static void CopyAsync(IntPtr dst, IntPtr src, long bytes, int deviceId)
    {
        var api = Load();
        Check(api.SetDevice(deviceId), "cudaSetDevice", deviceId);
        Check(api.MemcpyAsync((void*)dst, (void*)src, (nuint)bytes, DeviceToDevice, IntPtr.Zero), "cudaMemcpyAsync (device to device)", deviceId);
    }

    /// <summary>Enqueues <paramref name="height"/> copies of <paramref name="width"/> bytes, rows <paramref name="dpitch"/> / <paramref name="spitch"/> apart.</summary>
    public static void Copy2DAsync(IntPtr dst, long dpitch, IntPtr src, long spitch, long width, long height, int deviceId)
    {
        var api = Load();
        Check(api.SetDevice(deviceId), "cudaSetDevice", deviceId);
        Check(api.Memcpy2DAsync((void*)dst, (nuint)dpitch, (void*)src, (nuint)spitch, (nuint)width, (nuint)height, DeviceToDevice, IntPtr.Zero),
            "cudaMemcpy2DAsync (device to device)", deviceId);
    }

    /// <summary>Enqueues zero bytes over <paramref name="height"/> rows of <paramref name="width"/> bytes, <paramref name="pitch"/> apart.</summary>
    public static void Zero2DAsync(IntPtr dst, long pitch, long width, long height, int deviceId)
    {
        var api = Load();
        Check(api.SetDevice(deviceId), "cudaSetDevice", deviceId);
        Check(height == 1 ? api.MemsetAsync((void*)dst, 0, (nuint)width, IntPtr.Zero) : api.Memset2DAsync((void*)dst, (nuint)pitch, 0, (nuint)width, (nuint)height, IntPtr.Zero),
            "cudaMemset2DAsync", deviceId);
    }

    /// <summary>Waits until everything enqueued on the device has finished.</summary>
    public static void Synchronize(int deviceId)
    {
        var api = Load();
        Check(api.SetDevice(deviceId), "cudaSetDevice", deviceId);
        Check(api.DeviceSynchronize(), "cudaDeviceSynchronize", deviceId);
    }

    /// <summary>Copies host bytes to the device and waits (pageable memory: see <see cref="CopyToDevice{T}(ReadOnlySpan{T}, DeviceBuffer)"/>).</summary>
    public static void Upload<T>(ReadOnlySpan<T> source, IntPtr dest, int deviceId) where T : unmanaged =>
        CopyToDevice(source, new DeviceBuffer(dest, (long)source.Length * sizeof(T), deviceId));

    /// <summary>Copies device bytes to host memory (synchronous).</summary>
    public static void Download<T>(IntPtr source, Span<T> dest, int deviceId) where T : unmanaged =>
        CopyToHost(new DeviceBuffer(source, (long)dest.Length * sizeof(T), deviceId), dest);

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
