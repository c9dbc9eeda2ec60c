using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using XLstmOnnx.Contract;

namespace XLstmOnnx.Runtime;

/// <summary>Logits of one call: [Batch, Positions, Vocab], row-major.</summary>
public sealed record Logits(float[] Values, int Batch, int Positions, int Vocab)
{
    /// <summary>The logits of row <paramref name="b"/> at position <paramref name="t"/>.</summary>
    public ReadOnlySpan<float> At(int b, int t) => Values.AsSpan((b * Positions + t) * Vocab, Vocab);
}

/// <summary>
/// A thin wrapper over one ONNX Runtime CPU session of an exported model: checks the model against its manifest, and
/// runs one call that takes tokens and the past state and returns logits and the present state. Owns the session.
/// </summary>
public sealed class XLstmSession : IDisposable
{
    private readonly InferenceSession _session;

    private XLstmSession(InferenceSession session, ModelManifest manifest, string dir, RuntimeOptions options, Generation.GenerationDefaults defaults)
    {
        _session = session;
        GenerationDefaults = defaults;
        Manifest = manifest;
        Directory = dir;
        Options = options;
        Io = new Generation.ModelIo(manifest);
    }

    public RuntimeOptions Options { get; }

    /// <summary>Names of the graph's outputs (logits, present state, optional next_token and hidden states).</summary>
    public IReadOnlyList<string> OutputNames => [.. _session.OutputMetadata.Keys];

    /// <summary>The graph contract's names, bound in one place for every call.</summary>
    internal Generation.ModelIo Io { get; }

    internal InferenceSession Session => _session;

    private Tokenization.HfTokenizer? _tokenizer;
    private bool _tokenizerLoaded;

    /// <summary>The model's tokenizer.json (copied by the exporter), or null when the checkpoint had none.</summary>
    public Tokenization.HfTokenizer? Tokenizer
    {
        get
        {
            if (!_tokenizerLoaded)
            {
                string path = Path.Combine(Directory, "tokenizer.json");
                _tokenizer = File.Exists(path) ? Tokenization.HfTokenizer.Load(path) : null;
                _tokenizerLoaded = true;
            }
            return _tokenizer;
        }
    }

    public ModelManifest Manifest { get; }
    public string Directory { get; }

    /// <summary>The model's decoding defaults (its generation_config.json; neutral ones when it has none), read at load.</summary>
    public Generation.GenerationDefaults GenerationDefaults { get; }

    /// <summary>Loads the exported model in <paramref name="dir"/>; the caller disposes the result.</summary>
    public static XLstmSession Load(string dir, RuntimeOptions? options = null)
    {
        options ??= new RuntimeOptions();
        options.Validate();
        var manifest = ModelManifest.Load(dir);
        var defaults = Generation.GenerationDefaults.Load(dir); // before the session: a bad file fails fast
        string path = Path.Combine(dir, manifest.ModelFile);
        if (!File.Exists(path)) throw new XLstmOnnxException($"{dir}: {manifest.ModelFile} named by {ModelManifest.FileName} is missing.");
        if (options.CudaGraph)
        {
            string cudaGraph = RuntimeOptions.Name(nameof(RuntimeOptions.CudaGraph));
            if (options.Device != ExecutionDevice.Cuda)
            {
                throw XLstmOnnxException.InParameter(cudaGraph,
                    $"{cudaGraph} needs {RuntimeOptions.Name(nameof(RuntimeOptions.Device))} {ExecutionDevice.Cuda}; found {options.Device}.");
            }
            if (manifest.MLstmKernels != MLstmKernels.Custom)
            {
                throw XLstmOnnxException.InParameter(cudaGraph, $"{cudaGraph}: {dir} has {ModelManifest.Field(nameof(ModelManifest.MLstmKernels))} "
                    + $"\"{manifest.MLstmKernels.JsonName()}\", whose Loop nodes cannot be captured; export with ExportOptions.MLstmKernels {MLstmKernels.Custom}.");
            }
        }
        var session = Open(path, manifest, dir, options);
        try
        {
            Check(session, manifest, path);
            return new XLstmSession(session, manifest, dir, options, defaults);
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    /// <summary>An ONNX Runtime session of <paramref name="path"/> (model.onnx or the mixed graph) with <paramref name="options"/>.</summary>
    private static InferenceSession Open(string path, ModelManifest manifest, string dir, RuntimeOptions options)
    {
        using var sessionOptions = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
        if (options.Threads > 0) sessionOptions.IntraOpNumThreads = options.Threads;
        // weights get exact-size device buffers, outside the activation arena (no arena rounding on 13 GB)
        sessionOptions.AddSessionConfigEntry("session.use_device_allocator_for_initializers", "1");
        if (options.ProfilePrefix is { } prefix)
        {
            sessionOptions.ProfileOutputPathPrefix = prefix; // first: enabling reads the prefix
            sessionOptions.EnableProfiling = true;
        }
        if (options.Device == ExecutionDevice.Cuda)
        {
            try
            {
                AppendCuda(sessionOptions, options.DeviceId, options.CudaGraph);
            }
            catch (OnnxRuntimeException e)
            {
                string device = RuntimeOptions.Name(nameof(RuntimeOptions.Device));
                throw XLstmOnnxException.InParameter(device, $"{device} {ExecutionDevice.Cuda}: ONNX Runtime's CUDA execution provider could not start on "
                    + $"device {options.DeviceId} (needs an NVIDIA GPU and the CUDA 13 libraries on LD_LIBRARY_PATH): {e.Message}", e);
            }
        }
        if (manifest.MLstmKernels == MLstmKernels.Custom) CustomOpLibrary.Register(sessionOptions, dir);
        try
        {
            return new InferenceSession(path, sessionOptions); // by path, so that external data resolves beside it
        }
        catch (OnnxRuntimeException e)
        {
            // a library built before --state-dtype bf16 has no kernels for a bfloat16 state: ORT calls the type invalid
            string hint = manifest.StateDtype == StateDtype.Bf16 && manifest.MLstmKernels == MLstmKernels.Custom && e.Message.Contains("bfloat16", StringComparison.Ordinal)
                ? $" The model keeps its state in bf16 ({ModelManifest.FileName} field '{ModelManifest.Field(nameof(ModelManifest.StateDtype))}'); the custom-op library "
                    + $"{CustomOpLibrary.Find() ?? CustomOpLibrary.FileName} may predate that: rebuild customops/."
                : "";
            throw new XLstmOnnxException($"{path}: ONNX Runtime could not load the model: {e.Message}{hint}", e);
        }
    }

    private InferenceSession? _mixed;

    /// <summary>Whether the mixed graph's calls are captured as CUDA graphs (set when <see cref="MixedSession"/> opens).</summary>
    internal bool MixedCaptured { get; private set; }

    /// <summary>Why ONNX Runtime would not open the mixed graph for capture, when it would not; null otherwise.</summary>
    public string? MixedCaptureError { get; private set; }

    /// <summary>Whether the export has the mixed graph (<see cref="ModelManifest.MixedModelFile"/>).</summary>
    public bool HasMixedGraph => Manifest.MixedModelFile is not null;

    /// <summary>
    /// The mixed graph's session (a decode step and a prompt piece in one call), opened on first use with this session's
    /// options. It holds its own copy of the weights on the device. Throws when the export has no mixed graph.
    /// </summary>
    internal InferenceSession MixedSession
    {
        get
        {
            if (_mixed is not null) return _mixed;
            if (Manifest.MixedModelFile is not { } file)
            {
                throw new XLstmOnnxException($"{Directory}: {ModelManifest.FileName} names no mixed graph (field '{ModelManifest.Field(nameof(ModelManifest.MixedModelFile))}'); export with ExportOptions.MixedGraph.");
            }
            string path = Path.Combine(Directory, file);
            if (!File.Exists(path)) throw new XLstmOnnxException($"{Directory}: {file} named by {ModelManifest.FileName} is missing.");
            // with CUDA graphs on, each (decode batch, state set, piece length) of it is captured once and replayed; should
            // ONNX Runtime refuse to capture this graph, it runs uncaptured (slower: every node launched from the host)
            InferenceSession session;
            try
            {
                session = Open(path, Manifest, Directory, Options);
                MixedCaptured = Options.CudaGraph;
            }
            catch (XLstmOnnxException e) when (Options.CudaGraph)
            {
                session = Open(path, Manifest, Directory, Options with { CudaGraph = false });
                MixedCaptureError = e.Message;
            }
            var expected = Io.MixedInputs();
            var missing = expected.Where(n => !session.InputMetadata.ContainsKey(n)).ToList();
            if (missing.Count > 0 || session.InputMetadata.Count != expected.Count)
            {
                session.Dispose();
                throw new XLstmOnnxException($"{path}: the mixed graph must take {expected.Count} inputs ({string.Join(", ", expected.Take(4))}, ...); "
                    + $"it takes {session.InputMetadata.Count}{(missing.Count > 0 ? $", without {string.Join(", ", missing.Take(4))}" : "")}.");
            }
            return _mixed = session;
        }
    }

    /// <summary>
    /// The CUDA EP on <paramref name="deviceId"/>, with TF32 off: fp32 models must compute in fp32 (TF32's 10-bit mantissa
    /// moves logits by ~1e-2, far outside the 1e-4 we verify to).
    /// </summary>
    internal static void AppendCuda(SessionOptions options, int deviceId, bool cudaGraph = false)
    {
        using var cuda = new OrtCUDAProviderOptions();
        cuda.UpdateOptions(new Dictionary<string, string>
        {
            ["device_id"] = deviceId.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["use_tf32"] = "0",
            // ONNX Runtime refuses graph capture (session creation fails) when a node is not on the CUDA EP
            ["enable_cuda_graph"] = cudaGraph ? "1" : "0",
            // grow the activation arena by what is asked, not to the next power of two: a 7B model's 13 GB of weights
            // leave little room under a 15 GB budget
            ["arena_extend_strategy"] = "kSameAsRequested",
        });
        options.AppendExecutionProvider_CUDA(cuda);
    }

    private static void Check(InferenceSession s, ModelManifest m, string path)
    {
        var expected = new List<string> { m.Input };
        if (m.AttentionMask) expected.Add(GraphNames.AttentionMask);
        expected.AddRange(m.State.PastNames());
        foreach (var name in expected)
        {
            if (!s.InputMetadata.ContainsKey(name))
            {
                throw new XLstmOnnxException($"{path}: the manifest expects input '{name}'; the model declares {string.Join(", ", s.InputMetadata.Keys)}.");
            }
        }
        if (s.InputMetadata.Count != expected.Count)
        {
            throw new XLstmOnnxException($"{path}: the model has {s.InputMetadata.Count} inputs; the manifest implies {expected.Count}.");
        }
        if (!s.OutputMetadata.TryGetValue(GraphNames.Logits, out var logits)) throw new XLstmOnnxException($"{path}: the model has no '{GraphNames.Logits}' output.");
        // the sizes the runtime allocates by must be the graph's: a manifest edited by hand would fail inside a run
        void Dim(string what, int[] dims, int axis, long expected, string field)
        {
            if (dims.Length > axis && dims[axis] > 0 && dims[axis] != expected)
            {
                throw new XLstmOnnxException($"{path}: {what} has size {dims[axis]} on axis {axis}; {ModelManifest.FileName} field '{ModelManifest.Field(field)}' says {expected}.");
            }
        }
        Dim($"output '{GraphNames.Logits}'", logits.Dimensions, 2, m.VocabSize, nameof(ModelManifest.VocabSize));
        var layout = m.State;
        for (int l = 0; l < layout.Layers; l++)
        {
            foreach (var part in StateLayout.Parts)
            {
                string name = StateLayout.PastName(l, part);
                var meta = s.InputMetadata[name];
                var dims = meta.Dimensions;
                var type = StateLayout.IsBf16(part, m.StateDtype) ? TensorElementType.BFloat16 : TensorElementType.Float;
                if (meta.IsTensor && meta.ElementDataType != type)
                {
                    throw new XLstmOnnxException($"{path}: input '{name}' is {meta.ElementDataType}; {ModelManifest.FileName} field '{ModelManifest.Field(nameof(ModelManifest.StateDtype))}' "
                        + $"\"{m.StateDtype.JsonName()}\" implies {type}.");
                }
                var expectedShape = layout.Shape(part, 1);
                if (dims.Length != expectedShape.Length)
                {
                    throw new XLstmOnnxException($"{path}: input '{name}' has rank {dims.Length}; {ModelManifest.FileName} implies {TensorSliceShape(expectedShape)}.");
                }
                for (int axis = 1; axis < dims.Length; axis++)
                {
                    if (dims[axis] > 0 && dims[axis] != expectedShape[axis])
                    {
                        throw new XLstmOnnxException($"{path}: input '{name}' has size {dims[axis]} on axis {axis}; {ModelManifest.FileName} implies {expectedShape[axis]} "
                            + $"(num_layers, num_heads, qk_head_dim, v_head_dim: {m.NumLayers}, {m.NumHeads}, {m.QkHeadDim}, {m.VHeadDim}).");
                    }
                }
            }
        }
        if (m.NextToken != s.OutputMetadata.ContainsKey(GraphNames.NextToken))
        {
            throw new XLstmOnnxException($"{path}: the manifest says next_token is {(m.NextToken ? "" : "not ")}an output; the model {(m.NextToken ? "lacks it" : "has it")}.");
        }
    }

    private static string TensorSliceShape(long[] shape) => $"[batch, {string.Join(", ", shape.Skip(1))}]";

    /// <summary>A zero state for <paramref name="batch"/> sequences.</summary>
    public RecurrentState CreateState(int batch)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batch);
        return new RecurrentState(Manifest, batch);
    }

    /// <summary>
    /// Runs token ids [batch, seq] (row-major) from <paramref name="state"/>; replaces the state with the present state
    /// and returns the logits. <paramref name="hidden"/>, when given, receives the hidden-state outputs by name.
    /// </summary>
    public Logits Run(ReadOnlySpan<long> ids, int seq, RecurrentState state, IDictionary<string, float[]>? hidden = null)
    {
        if (Manifest.Input != GraphNames.InputIds) throw new XLstmOnnxException($"{Directory}: the model takes '{Manifest.Input}', not input_ids.");
        CheckBatch(ids.Length, seq, state, 1);
        foreach (var id in ids)
        {
            if (id < 0 || id >= Manifest.VocabSize) throw new XLstmOnnxException($"input_ids: token id {id} is outside [0, {Manifest.VocabSize}).");
        }
        using var input = OrtValue.CreateTensorValueFromMemory(ids.ToArray(), [state.Batch, seq]);
        return RunCore(input, seq, state, hidden);
    }

    /// <summary>Runs embeddings [batch, seq, E] (row-major) from <paramref name="state"/>; as <see cref="Run"/>.</summary>
    public Logits RunEmbeds(float[] embeds, int seq, RecurrentState state, IDictionary<string, float[]>? hidden = null)
    {
        if (Manifest.Input != GraphNames.InputsEmbeds) throw new XLstmOnnxException($"{Directory}: the model takes '{Manifest.Input}', not inputs_embeds.");
        CheckBatch(embeds.Length, seq, state, (int)Manifest.EmbeddingDim);
        using var input = OrtValue.CreateTensorValueFromMemory(embeds, [state.Batch, seq, Manifest.EmbeddingDim]);
        return RunCore(input, seq, state, hidden);
    }

    private void CheckBatch(int length, int seq, RecurrentState state, int width)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(seq);
        if (state.Manifest != Manifest) throw new ArgumentException("the state belongs to another model", nameof(state));
        if (length != (long)state.Batch * seq * width)
        {
            throw new XLstmOnnxException($"{Manifest.Input}: expected {state.Batch}×{seq}{(width > 1 ? $"×{width}" : "")} values for the state's batch; got {length}.");
        }
    }

    private Logits RunCore(OrtValue input, int seq, RecurrentState state, IDictionary<string, float[]>? hidden)
    {
        int batch = state.Batch;
        int positions = Manifest.Logits == LogitsOutput.All ? seq : 1;
        var logits = new float[(long)batch * positions * Manifest.VocabSize];
        var present = new float[Manifest.State.TensorCount][];
        var owned = new List<OrtValue>();
        OrtValue Own(OrtValue v)
        {
            owned.Add(v);
            return v;
        }
        try
        {
            var mask = Own(OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, batch * seq).ToArray(), [batch, seq]));
            var past = new OrtValue[present.Length];
            var presentValues = new OrtValue[present.Length];
            // a bfloat16 state (C and n with --state-dtype bf16) travels as bfloat16 arrays; the host keeps float32
            var presentBf16 = new BFloat16[present.Length][];
            for (int i = 0; i < present.Length; i++)
            {
                var part = StateLayout.PartOf(i);
                long[] shape = Manifest.State.Shape(part, batch);
                if (StateLayout.IsBf16(part, Manifest.StateDtype))
                {
                    past[i] = Own(OrtValue.CreateTensorValueFromMemory(Bf16.ToOrt(state[i]), shape));
                    presentBf16[i] = new BFloat16[state[i].Length];
                    presentValues[i] = Own(OrtValue.CreateTensorValueFromMemory(presentBf16[i], shape));
                }
                else
                {
                    past[i] = Own(OrtValue.CreateTensorValueFromMemory(state[i], shape));
                    present[i] = new float[state[i].Length];
                    presentValues[i] = Own(OrtValue.CreateTensorValueFromMemory(present[i], shape));
                }
            }
            var logitsValue = Own(OrtValue.CreateTensorValueFromMemory(logits, [batch, positions, Manifest.VocabSize]));
            using var binding = _session.CreateIoBinding();
            Io.Bind(binding, input, mask, past, presentValues, logitsValue, next: null);
            var hiddenNames = hidden is null ? [] : _session.OutputMetadata.Keys.Where(k => k.StartsWith(GraphNames.HiddenPrefix, StringComparison.Ordinal)).ToArray();
            foreach (var name in hiddenNames) binding.BindOutputToDevice(name, OrtMemoryInfo.DefaultInstance);
            using var runOptions = UncapturedRunOptions();
            _session.RunWithBinding(runOptions, binding);
            binding.SynchronizeBoundOutputs();
            for (int i = 0; i < present.Length; i++) state.Set(i, presentBf16[i] is { } bits ? Bf16.FromOrt(bits) : present[i]);
            if (hiddenNames.Length > 0)
            {
                var names = binding.GetOutputNames();
                using var outputs = binding.GetOutputValues();
                for (int i = 0; i < names.Length; i++)
                {
                    if (hiddenNames.Contains(names[i])) hidden!.Add(names[i], outputs[i].GetTensorDataAsSpan<float>().ToArray());
                }
            }
            return new Logits(logits, batch, positions, (int)Manifest.VocabSize);
        }
        finally
        {
            foreach (var v in owned) v.Dispose();
        }
    }

    /// <summary>Ends profiling (<see cref="RuntimeOptions.ProfilePrefix"/>) and returns the profile's file name.</summary>
    public string EndProfiling() => _session.EndProfiling();

    /// <summary>Run options for a call that must not be captured as a CUDA graph (prompts, host-array runs).</summary>
    internal RunOptions UncapturedRunOptions()
    {
        var run = new RunOptions();
        if (Options.CudaGraph) run.AddRunConfigEntry("gpu_graph_id", "-1");
        return run;
    }

    private int _lastGraphId; // 0 is reserved by ONNX Runtime

    /// <summary>
    /// <paramref name="count"/> CUDA graph ids no other user of this session has: ONNX Runtime keeps a captured graph
    /// for the session's lifetime and replays it for its id, over the buffers it was captured with, so a generator
    /// (its own batch and state buffers) must never reuse another's ids. Returns the first.
    /// </summary>
    internal int ReserveGraphIds(int count) => Interlocked.Add(ref _lastGraphId, count) - count + 1;

    private int _lastMixedGraphId;

    /// <summary>As <see cref="ReserveGraphIds"/>, for the mixed graph's session (its graph ids are its own).</summary>
    internal int ReserveMixedGraphIds(int count) => Interlocked.Add(ref _lastMixedGraphId, count) - count + 1;

    /// <summary>Run options that capture (first use) or replay (later) CUDA graph <paramref name="id"/> (1 or more).</summary>
    internal static RunOptions GraphRunOptions(int id)
    {
        var run = new RunOptions();
        run.AddRunConfigEntry("gpu_graph_id", id.ToString(System.Globalization.CultureInfo.InvariantCulture));
        return run;
    }

    public void Dispose()
    {
        _mixed?.Dispose();
        _session.Dispose();
    }
}
