using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using XLstmOnnx.Contract;

namespace XLstmOnnx.GraphBuilder.Config;

/// <summary>
/// An immutable, validated copy of a Hugging Face <c>xLSTMConfig</c> (<c>config.json</c>, <c>model_type = "xlstm"</c>).
/// Every field of transformers' config with the same default (the 7B values). Derived sizes are computed here and
/// nowhere else, with HF's exact formulas and quirks.
/// </summary>
public sealed record XLstmConfig
{
    /// <summary>Embedding rows and lm_head outputs (V).</summary>
    public long VocabSize { get; init; } = 50304;
    /// <summary>Model width H; used by every layer but the embedding.</summary>
    public long HiddenSize { get; init; } = 4096;
    /// <summary>Width of the embedding table only. HF: None means hidden_size.</summary>
    public long EmbeddingDim { get; init; } = 4096;
    /// <summary>Number of cache entries in HF's xLSTMCache.</summary>
    public long NumHiddenLayers { get; init; } = 32;
    /// <summary>Number of blocks (HF: None means num_hidden_layers).</summary>
    public long NumBlocks { get; init; } = 32;
    /// <summary>mLSTM heads (NH); the i/f gates are one scalar per head per token.</summary>
    public long NumHeads { get; init; } = 8;
    /// <summary>Bias on q/k/v/o/out_proj/FFN linears and on norm_mlstm, norm_ffn and multihead_norm.</summary>
    public bool UseBias { get; init; }
    /// <summary>RMSNorm/LayerNorm statistics in fp32 (out_norm always is).</summary>
    public bool NormReductionForceFloat32 { get; init; } = true;
    /// <summary>lm_head shares the embedding matrix.</summary>
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Ignored by HF: out_norm always exists. Kept for round trips.</summary>
    public bool AddOutNorm { get; init; } = true;
    /// <summary>eps of every RMSNorm and of the multi-head LayerNorm (inside the rsqrt).</summary>
    public double NormEps { get; init; } = 1e-6;
    /// <summary>q/k width = int(H * qk_dim_factor).</summary>
    public double QkDimFactor { get; init; } = 0.5;
    /// <summary>v and output-gate width = int(H * v_dim_factor).</summary>
    public double VDimFactor { get; init; } = 1.0;
    /// <summary>HF kernel name for prompts; see <see cref="KernelNames"/> for how it maps to ours.</summary>
    public string ChunkwiseKernel { get; init; } = "chunkwise--native_autograd";
    /// <summary>HF kernel name for the recurrent tail of a prompt.</summary>
    public string SequenceKernel { get; init; } = "native_sequence__native";
    /// <summary>HF kernel name for one-token steps.</summary>
    public string StepKernel { get; init; } = "native";
    /// <summary>"train", "train_with_padding" or "inference". Exports always have inference semantics.</summary>
    public string Mode { get; init; } = "inference";
    /// <summary>Chunk length L of the chunkwise form (HF's default; the one place it is written).</summary>
    public long ChunkSize { get; init; } = 64;
    /// <summary>Only read by HF in train modes.</summary>
    public bool ReturnLastStates { get; init; } = true;
    /// <summary>Ignored by HF's native path; kept for round trips.</summary>
    public string AutocastKernelDtype { get; init; } = "bfloat16";
    /// <summary>eps added to the mLSTM normalizer denominator, outside the max.</summary>
    public double Eps { get; init; } = 1e-6;
    /// <summary>HF's state dtype in the sequence/step kernels. Our exported state is always float32.</summary>
    public string InferenceStateDtype { get; init; } = "float32";
    /// <summary>FFN up-projection factor.</summary>
    public double FfnProjFactor { get; init; } = 2.667;
    /// <summary>Rounding multiple of the FFN width.</summary>
    public long FfnRoundUpToMultipleOf { get; init; } = 64;
    /// <summary>Soft cap of the i/f gate pre-activations; null means none.</summary>
    public double? GateSoftCap { get; init; } = 15.0;
    /// <summary>Soft cap of the logits; null means none.</summary>
    public double? OutputLogitSoftCap { get; init; } = 30.0;
    /// <summary>"single" (separate linears) or "fused" (concatenated linears).</summary>
    public string WeightMode { get; init; } = "single";
    /// <summary>Generation default; no effect on the exported graph.</summary>
    public bool UseCache { get; init; } = true;
    public long? PadTokenId { get; init; } = 1;
    public long? BosTokenId { get; init; } = 0;
    public long? EosTokenId { get; init; } = 2;
    /// <summary>Longer prompts are run in segments of this many tokens (HF's model-level segmentation).</summary>
    public long MaxInferenceChunksize { get; init; } = 16384;

    /// <summary>Fields we do not interpret (architectures, torch_dtype, ...), kept so that a round trip loses nothing.</summary>
    public IReadOnlyDictionary<string, JsonNode?> Extra { get; init; } = new Dictionary<string, JsonNode?>();

    // ---- derived sizes (HF xLSTMLayer / xLSTMFeedForward / xLSTMCache) ----

    /// <summary>q/k width of the layer: <c>int(H * qk_dim_factor)</c>, no rounding (xLSTMLayer).</summary>
    public long QkDim => (long)(HiddenSize * QkDimFactor);
    /// <summary>v width of the layer: <c>int(H * v_dim_factor)</c>, no rounding.</summary>
    public long VDim => (long)(HiddenSize * VDimFactor);
    /// <summary>DQK, per-head q/k width (the reshape to [B,S,NH,-1]).</summary>
    public long QkHeadDim => QkDim / NumHeads;
    /// <summary>DV, per-head v width.</summary>
    public long VHeadDim => VDim / NumHeads;
    /// <summary>HF's cache q/k width: round_up(H * qk_dim_factor, 64). Must equal <see cref="QkDim"/>.</summary>
    public long CacheQkDim => PythonMath.RoundUpToNextMultipleOf(HiddenSize * QkDimFactor, 64);
    /// <summary>HF's cache v width: round_up(H * v_dim_factor, 64). Must equal <see cref="VDim"/>.</summary>
    public long CacheVDim => PythonMath.RoundUpToNextMultipleOf(HiddenSize * VDimFactor, 64);
    /// <summary>FFN width: round_up(H * ffn_proj_factor, ffn_round_up_to_multiple_of), Python float math (10944 for 7B).</summary>
    public long FfnDim => PythonMath.RoundUpToNextMultipleOf(HiddenSize * FfnProjFactor, FfnRoundUpToMultipleOf);
    /// <summary>
    /// True when the checkpoint stores its projections concatenated (HF's <c>weight_mode = "fused"</c>): a storage
    /// layout of the weights only, unrelated to the fused kernels of the ONNX Runtime fast path.
    /// </summary>
    public bool ConcatenatedWeights => WeightMode == "fused";
    /// <summary>HF's inference schedule of the cell: <see cref="ChunkSize"/> and <see cref="MaxInferenceChunksize"/>.</summary>
    public Schedule Schedule => new(ChunkSize, MaxInferenceChunksize);

    /// <summary>Reads and validates <paramref name="path"/> (an HF config.json).</summary>
    public static XLstmConfig Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            throw new XLstmOnnxException($"{path}: config file not found; an HF checkpoint folder holds config.json.");
        }
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses and validates config JSON; <paramref name="source"/> names it in errors.</summary>
    public static XLstmConfig Parse(string json, string source)
    {
        try
        {
            return ParseCore(json, source);
        }
        catch (InvalidOperationException e) // a JSON string that cannot be decoded (a lone surrogate, "\ud800")
        {
            throw new XLstmOnnxException($"{source}: invalid JSON: {e.Message}", e);
        }
        catch (ArgumentException e) // JsonObject's refusal of a field given twice
        {
            throw new XLstmOnnxException($"{source}: invalid JSON: {e.Message}", e);
        }
    }

    private static XLstmConfig ParseCore(string json, string source)
    {
        JsonObject obj;
        try
        {
            obj = JsonNode.Parse(json) as JsonObject
                ?? throw new XLstmOnnxException($"{source}: expected a JSON object at the top level.");
        }
        catch (JsonException e)
        {
            throw new XLstmOnnxException($"{source}: invalid JSON: {e.Message}", e);
        }
        var reader = new FieldReader(obj, source);
        string? modelType = reader.OptionalString("model_type");
        if (modelType is not null && modelType != "xlstm")
        {
            throw new XLstmOnnxException($"{source}: field 'model_type' must be \"xlstm\"; found \"{modelType}\".");
        }
        var d = new XLstmConfig();
        // HF: hidden_size = hidden_size if not None else embedding_dim; then embedding_dim = embedding_dim or hidden_size.
        // Because hidden_size defaults to 4096 (not None), a missing hidden_size stays 4096 even when embedding_dim is set.
        long? hidden = reader.OptionalLong("hidden_size", d.HiddenSize, nullMeansDefault: false);
        long? embedding = reader.OptionalLong("embedding_dim", null, nullMeansDefault: true);
        long hiddenSize = hidden ?? embedding ?? d.HiddenSize;
        long embeddingDim = embedding ?? hiddenSize;
        long numHiddenLayers = reader.OptionalLong("num_hidden_layers", d.NumHiddenLayers, nullMeansDefault: false) ?? d.NumHiddenLayers;
        long numBlocks = reader.OptionalLong("num_blocks", null, nullMeansDefault: true) ?? numHiddenLayers;
        var config = new XLstmConfig
        {
            VocabSize = reader.Long("vocab_size", d.VocabSize),
            HiddenSize = hiddenSize,
            EmbeddingDim = embeddingDim,
            NumHiddenLayers = numHiddenLayers,
            NumBlocks = numBlocks,
            NumHeads = reader.Long("num_heads", d.NumHeads),
            UseBias = reader.Bool("use_bias", d.UseBias),
            NormReductionForceFloat32 = reader.Bool("norm_reduction_force_float32", d.NormReductionForceFloat32),
            TieWordEmbeddings = reader.Bool("tie_word_embeddings", d.TieWordEmbeddings),
            AddOutNorm = reader.Bool("add_out_norm", d.AddOutNorm),
            NormEps = reader.Double("norm_eps", d.NormEps),
            QkDimFactor = reader.Double("qk_dim_factor", d.QkDimFactor),
            VDimFactor = reader.Double("v_dim_factor", d.VDimFactor),
            ChunkwiseKernel = reader.String("chunkwise_kernel", d.ChunkwiseKernel),
            SequenceKernel = reader.String("sequence_kernel", d.SequenceKernel),
            StepKernel = reader.String("step_kernel", d.StepKernel),
            Mode = reader.String("mode", d.Mode),
            ChunkSize = reader.Long("chunk_size", d.ChunkSize),
            ReturnLastStates = reader.Bool("return_last_states", d.ReturnLastStates),
            AutocastKernelDtype = reader.String("autocast_kernel_dtype", d.AutocastKernelDtype),
            Eps = reader.Double("eps", d.Eps),
            InferenceStateDtype = reader.String("inference_state_dtype", d.InferenceStateDtype),
            FfnProjFactor = reader.Double("ffn_proj_factor", d.FfnProjFactor),
            FfnRoundUpToMultipleOf = reader.Long("ffn_round_up_to_multiple_of", d.FfnRoundUpToMultipleOf),
            GateSoftCap = reader.NullableDouble("gate_soft_cap", d.GateSoftCap),
            OutputLogitSoftCap = reader.NullableDouble("output_logit_soft_cap", d.OutputLogitSoftCap),
            WeightMode = reader.String("weight_mode", d.WeightMode),
            UseCache = reader.Bool("use_cache", d.UseCache),
            PadTokenId = reader.NullableTokenId("pad_token_id", d.PadTokenId),
            BosTokenId = reader.NullableTokenId("bos_token_id", d.BosTokenId),
            EosTokenId = reader.NullableTokenId("eos_token_id", d.EosTokenId),
            MaxInferenceChunksize = reader.Long("max_inference_chunksize", d.MaxInferenceChunksize),
            Extra = reader.Unread(),
        };
        config.Validate(source);
        return config;
    }

    /// <summary>Checks every value HF would reject or that would make HF's model fail; throws naming the field.</summary>
    public void Validate(string source = "config.json")
    {
        void Fail(string field, string expected, object actual) =>
            throw new XLstmOnnxException($"{source}: field '{field}' must be {expected}; found {Format(actual)}.");

        if (VocabSize <= 0) Fail("vocab_size", "a positive integer", VocabSize);
        if (HiddenSize <= 0) Fail("hidden_size", "a positive integer", HiddenSize);
        if (EmbeddingDim != HiddenSize)
        {
            Fail("embedding_dim", $"equal to hidden_size ({HiddenSize}): HF feeds the embedding straight into blocks of width hidden_size "
                + "(note: a config without hidden_size gets HF's default 4096, not embedding_dim)", EmbeddingDim);
        }
        if (NumBlocks <= 0) Fail("num_blocks", "a positive integer", NumBlocks);
        if (NumHiddenLayers < NumBlocks)
        {
            Fail("num_hidden_layers", $"at least num_blocks ({NumBlocks}): HF's cache has num_hidden_layers entries, one per block", NumHiddenLayers);
        }
        if (NumHeads <= 0) Fail("num_heads", "a positive integer", NumHeads);
        if (QkDimFactor <= 0 || QkDim <= 0) Fail("qk_dim_factor", "positive with int(hidden_size * qk_dim_factor) > 0", QkDimFactor);
        if (VDimFactor <= 0 || VDim <= 0) Fail("v_dim_factor", "positive with int(hidden_size * v_dim_factor) > 0", VDimFactor);
        if (QkDim % NumHeads != 0) Fail("num_heads", $"a divisor of the q/k width int(hidden_size * qk_dim_factor) = {QkDim}", NumHeads);
        if (VDim % NumHeads != 0) Fail("num_heads", $"a divisor of the v width int(hidden_size * v_dim_factor) = {VDim}", NumHeads);
        if (CacheQkDim != QkDim)
        {
            Fail("qk_dim_factor", $"such that hidden_size * qk_dim_factor is a multiple of 64: HF's cache uses round_up(·, 64) = {CacheQkDim} "
                + $"while its layers use int(·) = {QkDim}, so HF itself cannot carry the state", QkDimFactor);
        }
        if (CacheVDim != VDim)
        {
            Fail("v_dim_factor", $"such that hidden_size * v_dim_factor is a multiple of 64: HF's cache uses round_up(·, 64) = {CacheVDim} "
                + $"while its layers use int(·) = {VDim}", VDimFactor);
        }
        if (NormEps <= 0 || double.IsNaN(NormEps)) Fail("norm_eps", "a positive number", NormEps);
        if (Eps < 0 || double.IsNaN(Eps)) Fail("eps", "a non-negative number", Eps);
        if (Schedule.Invalid(ChunkSize, MaxInferenceChunksize) is { } schedule) Fail(schedule.Field, "a positive integer", schedule.Value);
        if (FfnProjFactor <= 0) Fail("ffn_proj_factor", "a positive number", FfnProjFactor);
        if (FfnRoundUpToMultipleOf <= 0) Fail("ffn_round_up_to_multiple_of", "a positive integer", FfnRoundUpToMultipleOf);
        if (FfnDim <= 0) Fail("ffn_proj_factor", "large enough for a positive FFN width", FfnProjFactor);
        if (GateSoftCap is { } g && !(g > 0)) Fail("gate_soft_cap", "a positive number or null", g);
        if (OutputLogitSoftCap is { } c && !(c > 0)) Fail("output_logit_soft_cap", "a positive number or null", c);
        if (WeightMode is not ("single" or "fused")) Fail("weight_mode", "\"single\" or \"fused\"", WeightMode);
        if (Mode is not ("train" or "train_with_padding" or "inference")) Fail("mode", "\"train\", \"train_with_padding\" or \"inference\"", Mode);
        foreach (var (field, value) in new[] { ("inference_state_dtype", InferenceStateDtype), ("autocast_kernel_dtype", AutocastKernelDtype) })
        {
            if (value is not ("float32" or "bfloat16" or "float16")) Fail(field, "\"float32\", \"bfloat16\" or \"float16\"", value);
        }
        KernelNames.Resolve(this, source); // throws for unknown kernel names
        foreach (var (field, id) in new[] { ("pad_token_id", PadTokenId), ("bos_token_id", BosTokenId), ("eos_token_id", EosTokenId) })
        {
            if (id is { } v && (v < 0 || v >= VocabSize)) Fail(field, $"null or a token id in [0, {VocabSize})", v);
        }
    }

    /// <summary>Writes the config as HF config.json (HF field names; unknown fields kept).</summary>
    public string ToJson()
    {
        var o = new JsonObject();
        foreach (var (k, v) in Extra) o[k] = v?.DeepClone();
        o["model_type"] = "xlstm";
        o["vocab_size"] = VocabSize;
        o["hidden_size"] = HiddenSize;
        o["embedding_dim"] = EmbeddingDim;
        o["num_hidden_layers"] = NumHiddenLayers;
        o["num_blocks"] = NumBlocks;
        o["num_heads"] = NumHeads;
        o["use_bias"] = UseBias;
        o["norm_reduction_force_float32"] = NormReductionForceFloat32;
        o["tie_word_embeddings"] = TieWordEmbeddings;
        o["add_out_norm"] = AddOutNorm;
        o["norm_eps"] = Float(NormEps);
        o["qk_dim_factor"] = Float(QkDimFactor);
        o["v_dim_factor"] = Float(VDimFactor);
        o["chunkwise_kernel"] = ChunkwiseKernel;
        o["sequence_kernel"] = SequenceKernel;
        o["step_kernel"] = StepKernel;
        o["mode"] = Mode;
        o["chunk_size"] = ChunkSize;
        o["return_last_states"] = ReturnLastStates;
        o["autocast_kernel_dtype"] = AutocastKernelDtype;
        o["eps"] = Float(Eps);
        o["inference_state_dtype"] = InferenceStateDtype;
        o["ffn_proj_factor"] = Float(FfnProjFactor);
        o["ffn_round_up_to_multiple_of"] = FfnRoundUpToMultipleOf;
        o["gate_soft_cap"] = Float(GateSoftCap);
        o["output_logit_soft_cap"] = Float(OutputLogitSoftCap);
        o["weight_mode"] = WeightMode;
        o["use_cache"] = UseCache;
        o["pad_token_id"] = PadTokenId;
        o["bos_token_id"] = BosTokenId;
        o["eos_token_id"] = EosTokenId;
        o["max_inference_chunksize"] = MaxInferenceChunksize;
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>
    /// A float field as Python's json writes it: always with a fraction or an exponent (<c>1.0</c>, <c>1e-06</c>), never
    /// as a JSON integer: transformers' strict config refuses an int where it declares a float (<c>v_dim_factor: 1</c>).
    /// </summary>
    internal static JsonNode? Float(double? value)
    {
        if (value is not { } x) return null;
        if (!double.IsFinite(x)) throw new XLstmOnnxException($"config: {Format(x)} has no JSON form.");
        string text = x.ToString("R", CultureInfo.InvariantCulture).Replace("E", "e", StringComparison.Ordinal);
        if (!text.Contains('.') && !text.Contains('e')) text += ".0";
        return JsonNode.Parse(text); // a JsonElement value: written back exactly as parsed
    }

    internal static string Format(object? v) => v switch
    {
        null => "null",
        string s => $"\"{s}\"",
        double x => x.ToString("R", CultureInfo.InvariantCulture),
        bool b => b ? "true" : "false",
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => v.ToString() ?? "null",
    };

    /// <summary>Reads typed fields from a JSON object and remembers which ones it read.</summary>
    private sealed class FieldReader(JsonObject obj, string source)
    {
        private readonly HashSet<string> _read = [];

        private JsonNode? Get(string name, out bool present)
        {
            _read.Add(name);
            present = obj.TryGetPropertyValue(name, out var node);
            return node;
        }

        private XLstmOnnxException Wrong(string name, string expected, JsonNode? node) =>
            new($"{source}: field '{name}' must be {expected}; found {(node is null ? "null" : node.ToJsonString())}.");

        public long Long(string name, long dflt)
        {
            var node = Get(name, out bool present);
            if (!present) return dflt;
            return AsLong(name, node) ?? throw Wrong(name, "an integer", node);
        }

        public long? OptionalLong(string name, long? dflt, bool nullMeansDefault)
        {
            var node = Get(name, out bool present);
            if (!present) return dflt;
            if (node is null) return nullMeansDefault ? dflt : null;
            return AsLong(name, node) ?? throw Wrong(name, "an integer or null", node);
        }

        public long? NullableTokenId(string name, long? dflt)
        {
            var node = Get(name, out bool present);
            if (!present) return dflt;
            if (node is null) return null;
            if (node is JsonArray arr && arr.Count > 0) node = arr[0]; // HF allows a list of eos ids; the first is the primary
            return AsLong(name, node) ?? throw Wrong(name, "an integer, a list of integers or null", node);
        }

        private static long? AsLong(string name, JsonNode? node)
        {
            if (node is not JsonValue v) return null;
            if (v.TryGetValue(out long l)) return l;
            if (v.TryGetValue(out double d) && d == Math.Floor(d) && Math.Abs(d) < 9e15) return (long)d;
            return null;
        }

        public double Double(string name, double dflt)
        {
            var node = Get(name, out bool present);
            if (!present) return dflt;
            if (node is JsonValue v && v.TryGetValue(out double d)) return d;
            throw Wrong(name, "a number", node);
        }

        public double? NullableDouble(string name, double? dflt)
        {
            var node = Get(name, out bool present);
            if (!present) return dflt;
            if (node is null) return null;
            if (node is JsonValue v && v.TryGetValue(out double d)) return d;
            throw Wrong(name, "a number or null", node);
        }

        public bool Bool(string name, bool dflt)
        {
            var node = Get(name, out bool present);
            if (!present) return dflt;
            if (node is JsonValue v && v.TryGetValue(out bool b)) return b;
            throw Wrong(name, "true or false", node);
        }

        public string String(string name, string dflt)
        {
            var node = Get(name, out bool present);
            if (!present) return dflt;
            if (node is JsonValue v && v.TryGetValue(out string? s)) return s;
            throw Wrong(name, "a string", node);
        }

        public string? OptionalString(string name)
        {
            var node = Get(name, out bool present);
            if (!present || node is null) return null;
            if (node is JsonValue v && v.TryGetValue(out string? s)) return s;
            throw Wrong(name, "a string", node);
        }

        public IReadOnlyDictionary<string, JsonNode?> Unread()
        {
            var extra = new Dictionary<string, JsonNode?>();
            foreach (var (k, v) in obj)
            {
                if (!_read.Contains(k)) extra[k] = v?.DeepClone();
            }
            return extra;
        }
    }
}
