using System.Diagnostics;
using System.Runtime.InteropServices;
using Google.Protobuf;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Architecture;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Graph;
using XLstmOnnx.GraphBuilder.Onnx;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.GraphBuilder.Export;

/// <summary>Progress of an export: bytes of weights written so far, of the total.</summary>
public readonly record struct ExportProgress(long BytesDone, long BytesTotal, string Tensor);

/// <summary>What an export produced.</summary>
public sealed record ExportResult(string OutputDir, string ModelPath, string? DataPath, long WeightBytes, int NodeCount, TimeSpan Elapsed);

/// <summary>
/// The public entry point: HF checkpoint folder in, exported model folder out (model.onnx, optional model.onnx.data,
/// xlstm_runtime.json, config.json, tokenizer files). Everything is written into a temporary sibling folder that is
/// renamed into place at the end, so a failed export leaves nothing half-written behind.
/// </summary>
public static class OnnxExporter
{
    public const string ModelFile = "model.onnx";
    public const string DataFile = "model.onnx.data";
    /// <summary>The mixed graph (<see cref="ExportOptions.MixedGraph"/>), reading <see cref="DataFile"/> with model.onnx.</summary>
    public const string MixedModelFile = "model.mixed.onnx";
    /// <summary>External tensors start at multiples of 64 KiB so that they can be memory-mapped on every OS.</summary>
    public const int ExternalAlignment = 64 * 1024;
    /// <summary>Elements converted per block while streaming (4 MiB of float32).</summary>
    private const int BlockElements = 1 << 20;

    /// <summary>Tokenizer and generation files copied from the checkpoint when present.</summary>
    public static readonly string[] SideFiles = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"];

    /// <summary>
    /// Every name an export writes into its folder: a folder holding nothing else (and the manifest) is a previous export,
    /// which the next export may replace; anything else in it is the user's, and the export refuses to delete it.
    /// </summary>
    public static readonly IReadOnlyCollection<string> OutputFiles = new HashSet<string>(
        [ModelFile, DataFile, MixedModelFile, ModelManifest.FileName, "config.json", SamplerModel.FileName, TokenizerModel.FileName, AtomicFolder.LockFile, .. SideFiles],
        StringComparer.Ordinal);

    /// <summary>The absolute form of <paramref name="outputDir"/>; throws naming the parameter when it is empty or not a path.</summary>
    private static string FullOutputPath(string outputDir)
    {
        const string parameter = $"{nameof(OnnxExporter)}.{nameof(Export)}(outputDir)";
        if (string.IsNullOrWhiteSpace(outputDir)) throw XLstmOnnxException.MustBe(parameter, "a folder path", outputDir);
        try
        {
            return Path.GetFullPath(outputDir);
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw XLstmOnnxException.InParameter(parameter, $"{parameter}: \"{outputDir}\" is not a usable folder path ({e.Message}).", e);
        }
    }

    /// <summary>Exports the checkpoint in <paramref name="checkpointDir"/> to <paramref name="outputDir"/>.</summary>
    public static ExportResult Export(string checkpointDir, string outputDir, ExportOptions options,
        IProgress<ExportProgress>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        using var ckpt = HfCheckpoint.Open(checkpointDir);
        var weights = new WeightTable(ckpt.Config).Bind(ckpt.Tensors, checkpointDir);
        var side = SideFiles.Select(f => Path.Combine(checkpointDir, f)).Where(File.Exists).ToList();
        return ExportModel(ckpt.Config, weights, outputDir, options, side, progress, cancel);
    }

    /// <summary>Exports a model given as config plus bound weights (checkpoint or generated).</summary>
    public static ExportResult ExportModel(XLstmConfig config, BoundWeights weights, string outputDir, ExportOptions options,
        IReadOnlyList<string> sideFiles, IProgress<ExportProgress>? progress = null, CancellationToken cancel = default)
    {
        var clock = Stopwatch.StartNew();
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(weights);
        options.Validate();
        string target = FullOutputPath(outputDir);
        if (!options.AllowNonFinite) weights = weights.CheckedFinite();
        var graph = XLstmGraphBuilder.Build(config, weights, options);
        long weightBytes = graph.Weights.Sum(w => w.Source.ElementCount() * WeightBytes.Size(w.Type)) + graph.RawWeights.Sum(w => w.Bytes);
        bool external = options.ExternalData switch
        {
            ExternalDataMode.Always => true,
            ExternalDataMode.Never => false,
            _ => weightBytes > options.ExternalDataThresholdBytes,
        };
        if (!external && weightBytes > int.MaxValue - (64L << 20))
        {
            string parameter = ExportOptions.Name(nameof(ExportOptions.ExternalData));
            throw XLstmOnnxException.InParameter(parameter,
                $"{parameter} {ExternalDataMode.Never}: the weights take {weightBytes} bytes, over protobuf's 2 GiB limit for one model.onnx; use {ExternalDataMode.Auto} or {ExternalDataMode.Always}.");
        }

        using var folder = AtomicFolder.Begin(target, OutputFiles, ModelManifest.FileName);
        string staging = folder.Staging;
        var model = Model(graph, options);
        WriteWeights(graph, staging, external, weightBytes, progress, cancel);
        using (var fs = new FileStream(Path.Combine(staging, ModelFile), FileMode.CreateNew, FileAccess.Write))
        {
            model.WriteTo(fs);
        }
        if (options.MixedGraph) WriteMixed(config, weights, options, graph, staging);
        var copied = new List<string>();
        foreach (var f in sideFiles)
        {
            File.Copy(f, Path.Combine(staging, Path.GetFileName(f)));
            if (Path.GetFileName(f).StartsWith("tokenizer", StringComparison.Ordinal)) copied.Add(Path.GetFileName(f));
        }
        if (sideFiles.FirstOrDefault(f => Path.GetFileName(f) == "tokenizer.json") is { } tokenizerJson)
        {
            string? tokenizerConfig = sideFiles.FirstOrDefault(f => Path.GetFileName(f) == "tokenizer_config.json");
            File.WriteAllBytes(Path.Combine(staging, TokenizerModel.FileName), TokenizerModel.Build(tokenizerJson, tokenizerConfig));
        }
        // token ids in: the model generates, so the sampler for its logits goes beside it
        bool sampler = !options.InputsEmbeds;
        if (sampler) File.WriteAllBytes(Path.Combine(staging, SamplerModel.FileName), SamplerBuilder.Build(config.VocabSize));
        File.WriteAllText(Path.Combine(staging, "config.json"), config.ToJson());
        File.WriteAllText(Path.Combine(staging, ModelManifest.FileName), Manifest(config, options, external ? DataFile : null, copied, sampler).ToJson());
        cancel.ThrowIfCancellationRequested();
        folder.Commit();
        return new ExportResult(target, Path.Combine(target, ModelFile), external ? Path.Combine(target, DataFile) : null,
            weightBytes, graph.Proto.Node.Count, clock.Elapsed);
    }

    private static ModelProto Model(OnnxGraph graph, ExportOptions options)
    {
        var model = new ModelProto
        {
            IrVersion = ExportOptions.IrVersion,
            ProducerName = "XLstmOnnx",
            ProducerVersion = typeof(OnnxExporter).Assembly.GetName().Version?.ToString() ?? "0",
            DocString = "xLSTMForCausalLM exported by XLstmOnnx from a Hugging Face checkpoint.",
            Graph = graph.Proto,
        };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = ExportOptions.Opset });
        if (graph.Proto.Node.Any(n => n.Domain == "com.microsoft")) model.OpsetImport.Add(new OperatorSetIdProto { Domain = "com.microsoft", Version = 1 });
        if (options.MLstmKernels == MLstmKernels.Custom)
        {
            model.OpsetImport.Add(new OperatorSetIdProto { Domain = CustomOps.Domain, Version = CustomOps.DomainVersion });
        }
        return model;
    }

    /// <summary>
    /// Writes model.mixed.onnx: the mixed graph, whose initializers are the plain graph's as written (the same external
    /// data entries, so both read one weights file; raw bytes copied for small models). Every weight the mixed graph
    /// reads must be one the plain graph wrote.
    /// </summary>
    private static void WriteMixed(XLstmConfig config, BoundWeights weights, ExportOptions options, OnnxGraph plain, string staging)
    {
        var mixed = XLstmGraphBuilder.BuildMixed(config, weights, options);
        var written = plain.Proto.Initializer.ToDictionary(t => t.Name);
        foreach (var name in mixed.Weights.Select(w => w.Name).Concat(mixed.RawWeights.Select(w => w.Name)))
        {
            if (!written.TryGetValue(name, out var t))
            {
                throw new InvalidOperationException($"{MixedModelFile}: weight {name} is not one of {ModelFile}'s initializers");
            }
            mixed.Proto.Initializer.Add(t.Clone());
        }
        using var fs = new FileStream(Path.Combine(staging, MixedModelFile), FileMode.CreateNew, FileAccess.Write);
        Model(mixed, options).WriteTo(fs);
    }

    /// <summary>The manifest of a model exported from <paramref name="c"/> with <paramref name="o"/>.</summary>
    internal static ModelManifest Manifest(XLstmConfig c, ExportOptions o, string? externalDataFile, IReadOnlyList<string> tokenizerFiles, bool sampler) => new()
    {
        Producer = $"XLstmOnnx {typeof(OnnxExporter).Assembly.GetName().Version}",
        ModelFile = ModelFile,
        ExternalDataFile = externalDataFile,
        MixedModelFile = o.MixedGraph ? MixedModelFile : null,
        Dtype = o.Dtype,
        Quantization = o.QuantizeBits is { } bits ? $"int{bits}-block{o.QuantizeBlockSize}" : null,
        StateDtype = o.StateDtype,
        MLstmKernels = o.MLstmKernels,
        CustomOpDomain = o.MLstmKernels == MLstmKernels.Custom ? $"{CustomOps.Domain}:{CustomOps.DomainVersion}" : null,
        Input = o.InputsEmbeds ? GraphNames.InputsEmbeds : GraphNames.InputIds,
        AttentionMask = o.AttentionMask,
        Logits = o.LastLogitsOnly ? LogitsOutput.Last : LogitsOutput.All,
        HiddenStates = o.HiddenStates,
        NextToken = o.NextToken,
        NumLayers = checked((int)c.NumBlocks),
        NumHeads = c.NumHeads,
        QkHeadDim = c.QkHeadDim,
        VHeadDim = c.VHeadDim,
        VocabSize = c.VocabSize,
        HiddenSize = c.HiddenSize,
        EmbeddingDim = c.EmbeddingDim,
        ChunkSize = c.ChunkSize,
        MaxInferenceChunksize = c.MaxInferenceChunksize,
        BosTokenId = c.BosTokenId,
        EosTokenId = c.EosTokenId,
        PadTokenId = c.PadTokenId,
        SamplerFile = sampler ? SamplerModel.FileName : null,
        SamplerVersion = sampler ? SamplerModel.Version : 0,
        TokenizerFiles = tokenizerFiles,
    };

    /// <summary>Streams every weight as float32, into model.onnx.data (aligned) or into the proto's raw_data.</summary>
    private static void WriteWeights(OnnxGraph graph, string dir, bool external, long total, IProgress<ExportProgress>? progress, CancellationToken cancel)
    {
        long done = 0;
        var buffer = new float[BlockElements];
        using var data = external ? new FileStream(Path.Combine(dir, DataFile), FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 22) : null;
        var encoded = new byte[BlockElements * 4];
        foreach (var (name, source, type) in graph.Weights)
        {
            cancel.ThrowIfCancellationRequested();
            long count = source.ElementCount();
            int size = WeightBytes.Size(type);
            var t = new TensorProto { Name = name, DataType = (int)type };
            t.Dims.AddRange(source.Shape);
            if (data is not null)
            {
                long pad = (ExternalAlignment - data.Position % ExternalAlignment) % ExternalAlignment;
                if (pad > 0) data.Write(new byte[pad]);
                long offset = data.Position;
                for (long i = 0; i < count; i += BlockElements)
                {
                    cancel.ThrowIfCancellationRequested();
                    int n = (int)Math.Min(BlockElements, count - i);
                    source.ReadFloat32(i, buffer.AsSpan(0, n));
                    data.Write(WeightBytes.Encode(buffer.AsSpan(0, n), type, encoded));
                    done += (long)n * size;
                    progress?.Report(new ExportProgress(done, total, name));
                }
                t.DataLocation = TensorProto.Types.DataLocation.External;
                t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = DataFile });
                t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString() });
                t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = (count * size).ToString() });
            }
            else
            {
                var all = new float[count];
                source.ReadFloat32(0, all);
                t.RawData = ByteString.CopyFrom(WeightBytes.Encode(all, type));
                done += count * size;
                progress?.Report(new ExportProgress(done, total, name));
            }
            graph.Proto.Initializer.Add(t);
        }
        foreach (var (name, type, shape, bytes, make) in graph.RawWeights)
        {
            cancel.ThrowIfCancellationRequested();
            byte[] raw = make();
            if (raw.LongLength != bytes) throw new InvalidOperationException($"initializer {name}: {raw.LongLength} bytes made, {bytes} declared");
            var t = new TensorProto { Name = name, DataType = (int)type };
            t.Dims.AddRange(shape);
            if (data is not null)
            {
                long pad = (ExternalAlignment - data.Position % ExternalAlignment) % ExternalAlignment;
                if (pad > 0) data.Write(new byte[pad]);
                long offset = data.Position;
                data.Write(raw);
                t.DataLocation = TensorProto.Types.DataLocation.External;
                t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = DataFile });
                t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString() });
                t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = bytes.ToString() });
            }
            else
            {
                t.RawData = ByteString.CopyFrom(raw);
            }
            done += bytes;
            progress?.Report(new ExportProgress(done, total, name));
            graph.Proto.Initializer.Add(t);
        }
        data?.Flush(flushToDisk: true);
    }
}
