using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace XLstmOnnx.Runtime;

/// <summary>
/// The memory of the device a model runs on (host memory for the CPU, GPU memory for CUDA): allocation, copies and
/// fills of raw bytes, and tensor views over them for ONNX Runtime bindings. The runtime's long-lived buffers (the
/// state pool, the prefix cache, the fixed step buffers) live here rather than in ONNX Runtime's arena, so that their
/// addresses never change (a CUDA graph replays over them) and their size is known up front.
/// <para>
/// Copies and fills are enqueued (on CUDA, on the legacy default stream) and have landed only after <see cref="Wait"/>;
/// every caller waits before the next ONNX Runtime call that reads what it wrote. Host transfers wait themselves.
/// </para>
/// </summary>
internal abstract class DeviceMemory
{
    public static DeviceMemory For(RuntimeOptions options) =>
        options.Device == ExecutionDevice.Cuda ? new CudaMemory(options.DeviceId) : CpuMemory.Instance;

    /// <summary>Where tensors over this memory live, for ONNX Runtime.</summary>
    public abstract OrtMemoryInfo Info { get; }

    public abstract bool IsHost { get; }

    /// <summary>Zeroed bytes; <paramref name="what"/> names the buffer in an out-of-memory error.</summary>
    public abstract DeviceAllocation Allocate(long bytes, string what);

    internal abstract void Free(IntPtr address);

    public abstract void Copy2D(IntPtr dst, long dpitch, IntPtr src, long spitch, long width, long height);

    public void Copy(IntPtr dst, IntPtr src, long bytes) => Copy2D(dst, bytes, src, bytes, bytes, 1);

    public abstract void Zero2D(IntPtr dst, long pitch, long width, long height);

    public void Zero(IntPtr dst, long bytes) => Zero2D(dst, bytes, bytes, 1);

    /// <summary>Host values into device bytes; landed on return.</summary>
    public abstract void Upload<T>(ReadOnlySpan<T> source, IntPtr dest) where T : unmanaged;

    /// <summary>Device bytes into host values; landed on return.</summary>
    public abstract void Download<T>(IntPtr source, Span<T> dest) where T : unmanaged;

    /// <summary>Waits until every enqueued copy and fill has landed.</summary>
    public abstract void Wait();

    /// <summary>Free and total bytes of the device, or null for host memory (not budgeted here).</summary>
    public abstract (long Free, long Total)? Available();

    /// <summary>A tensor over <paramref name="bytes"/> at <paramref name="address"/> (no copy; valid while the memory lives).</summary>
    public OrtValue View(IntPtr address, TensorElementType type, long[] shape, long bytes) =>
        OrtValue.CreateTensorValueWithData(Info, type, shape, address, bytes);

    public static string Mib(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1048576.0:F0} MiB");
}

/// <summary>Bytes of a <see cref="DeviceMemory"/>, freed on Dispose. The only owner of its address.</summary>
internal sealed class DeviceAllocation(DeviceMemory memory, IntPtr address, long bytes) : IDisposable
{
    private IntPtr _address = address;

    public IntPtr Address => _address != IntPtr.Zero ? _address : throw new ObjectDisposedException(nameof(DeviceAllocation));
    public long Bytes { get; } = bytes;
    public DeviceMemory Memory => memory;

    public void Dispose()
    {
        if (_address == IntPtr.Zero) return;
        memory.Free(_address);
        _address = IntPtr.Zero;
    }
}

internal sealed unsafe class CpuMemory : DeviceMemory
{
    public static readonly CpuMemory Instance = new();

    public override OrtMemoryInfo Info => OrtMemoryInfo.DefaultInstance;
    public override bool IsHost => true;

    public override DeviceAllocation Allocate(long bytes, string what)
    {
        void* p;
        try
        {
            p = NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), 64);
        }
        catch (OutOfMemoryException e)
        {
            throw new XLstmOnnxException($"{what}: {Mib(bytes)} of host memory could not be allocated.", e);
        }
        NativeMemory.Clear(p, (nuint)bytes);
        return new DeviceAllocation(this, (IntPtr)p, bytes);
    }

    internal override void Free(IntPtr address) => NativeMemory.AlignedFree((void*)address);

    public override void Copy2D(IntPtr dst, long dpitch, IntPtr src, long spitch, long width, long height)
    {
        for (long r = 0; r < height; r++) Buffer.MemoryCopy((void*)(src + (nint)(r * spitch)), (void*)(dst + (nint)(r * dpitch)), width, width);
    }

    public override void Zero2D(IntPtr dst, long pitch, long width, long height)
    {
        for (long r = 0; r < height; r++) NativeMemory.Clear((void*)(dst + (nint)(r * pitch)), (nuint)width);
    }

    public override void Upload<T>(ReadOnlySpan<T> source, IntPtr dest) => source.CopyTo(new Span<T>((void*)dest, source.Length));

    public override void Download<T>(IntPtr source, Span<T> dest) => new ReadOnlySpan<T>((void*)source, dest.Length).CopyTo(dest);

    public override void Wait()
    {
    }

    public override (long Free, long Total)? Available() => null;
}

internal sealed class CudaMemory(int deviceId) : DeviceMemory
{
    private readonly OrtMemoryInfo _info = new(OrtMemoryInfo.allocatorCUDA, OrtAllocatorType.DeviceAllocator, deviceId, OrtMemType.Default);

    public override OrtMemoryInfo Info => _info;
    public override bool IsHost => false;

    public override DeviceAllocation Allocate(long bytes, string what)
    {
        var p = CudaRuntime.Malloc(Math.Max(bytes, 1), deviceId, what);
        CudaRuntime.Zero2DAsync(p, bytes, bytes, 1, deviceId);
        CudaRuntime.Synchronize(deviceId);
        return new DeviceAllocation(this, p, bytes);
    }

    internal override void Free(IntPtr address) => CudaRuntime.Free(address, deviceId);

    public override void Copy2D(IntPtr dst, long dpitch, IntPtr src, long spitch, long width, long height) =>
        CudaRuntime.Copy2DAsync(dst, dpitch, src, spitch, width, height, deviceId);

    public override void Zero2D(IntPtr dst, long pitch, long width, long height) => CudaRuntime.Zero2DAsync(dst, pitch, width, height, deviceId);

    public override void Upload<T>(ReadOnlySpan<T> source, IntPtr dest) => CudaRuntime.Upload(source, dest, deviceId);

    public override void Download<T>(IntPtr source, Span<T> dest) => CudaRuntime.Download(source, dest, deviceId);

    public override void Wait() => CudaRuntime.Synchronize(deviceId);

    public override (long Free, long Total)? Available() => CudaRuntime.MemoryInfo(deviceId);
}
