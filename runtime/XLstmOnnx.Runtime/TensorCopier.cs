using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using XLstmOnnx.GraphBuilder.Graph;
using XLstmOnnx.GraphBuilder.Onnx;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.Runtime;

/// <summary>
/// Copies float32 tensors between host and device memory through a one-node Identity model on the same execution
/// provider, with both ends bound by OrtIoBinding: the managed API has no memcpy, and this works for every EP.
/// Used for state snapshots, not on the per-token path. Owns its session.
/// </summary>
internal sealed class TensorCopier : IDisposable
{
    private readonly InferenceSession _session;
    private readonly RunOptions _run = new();

    public TensorCopier(RuntimeOptions options)
    {
        var g = new OnnxGraph("copy");
        g.Input("x", DataType.Float, null);
        g.Output("y", g.Op("/copy/Identity", "Identity", ["x"]), DataType.Float, null);
        var model = new ModelProto { IrVersion = 11, Graph = g.Proto, ProducerName = "XLstmOnnx" };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 23 });
        using var so = new SessionOptions();
        if (options.Device == ExecutionDevice.Cuda) XLstmSession.AppendCuda(so, options.DeviceId);
        _session = new InferenceSession(model.ToByteArray(), so);
    }

    /// <summary>Copies <paramref name="src"/> into <paramref name="dst"/> (same shape, any memory).</summary>
    public void Copy(OrtValue src, OrtValue dst)
    {
        using var binding = _session.CreateIoBinding();
        binding.BindInput("x", src);
        binding.BindOutput("y", dst);
        _session.RunWithBinding(_run, binding);
        binding.SynchronizeBoundOutputs();
    }

    public void Dispose()
    {
        _run.Dispose();
        _session.Dispose();
    }
}
