using System.Diagnostics.Metrics;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Runtime.Serving;

/// <summary>
/// The instruments of a serving engine, on a <see cref="System.Diagnostics.Metrics.Meter"/> named
/// <see cref="MeterName"/>: any exporter can read them (OpenTelemetry, dotnet-counters). Names follow vLLM's with
/// <c>xlstm_</c> in place of <c>vllm:</c>, so a vLLM dashboard needs only the prefix changed; every series carries the
/// <c>model_name</c> label when <see cref="ModelName"/> is set, as vLLM's do. Prometheus names (the exporter appends
/// <c>_total</c> to counters):
/// <list type="table">
/// <item><term>xlstm_time_to_first_token_seconds</term><description>histogram: from queueing to the first token, per request</description></item>
/// <item><term>xlstm_inter_token_latency_seconds</term><description>histogram: between two tokens of one request</description></item>
/// <item><term>xlstm_e2e_request_latency_seconds</term><description>histogram: from queueing to the last token, per completed request</description></item>
/// <item><term>xlstm_num_requests_running</term><description>gauge: sequences in the batch</description></item>
/// <item><term>xlstm_num_requests_waiting</term><description>gauge: requests queued for a slot</description></item>
/// <item><term>xlstm_prompt_tokens_total</term><description>counter: prompt tokens of admitted requests</description></item>
/// <item><term>xlstm_generation_tokens_total</term><description>counter: tokens generated</description></item>
/// <item><term>xlstm_request_success_total{finished_reason}</term><description>counter: finished requests by reason (stop, length, abort)</description></item>
/// <item><term>xlstm_requests_rejected_total</term><description>counter: requests refused because the queue was full</description></item>
/// <item><term>xlstm_prefix_cache_queries_total</term><description>counter: prompts looked up in the prefix-state cache</description></item>
/// <item><term>xlstm_prefix_cache_hits_total</term><description>counter: prompts that started from a cached state</description></item>
/// <item><term>xlstm_prefix_cache_bytes, xlstm_prefix_cache_entries, xlstm_prefix_cache_capacity</term><description>gauges: the cache's size, and how many states it can hold</description></item>
/// <item><term>xlstm_decode_step_seconds</term><description>histogram: one batched decode step</description></item>
/// <item><term>xlstm_decode_step_sequences</term><description>histogram: sequences in a decode step (batch occupancy)</description></item>
/// <item><term>xlstm_mixed_steps_total, xlstm_mixed_step_prompt_tokens_total, xlstm_mixed_step_prompts_total, xlstm_mixed_step_seconds_total</term><description>counters: decode steps that carried prompt pieces (the mixed graph), the prompt tokens and pieces they read, and their time (with xlstm_decode_step_seconds: the time of the other steps)</description></item>
/// </list>
/// The engine's loop thread records; exporters read from their own threads. Recording a token costs a counter add and
/// a histogram record, with no lock and no allocation.
/// </summary>
public sealed class ServingMetrics : IDisposable
{
    /// <summary>The meter's name, for <c>AddMeter</c> in an OpenTelemetry setup.</summary>
    public const string MeterName = "XLstmOnnx.Serving";

    /// <summary>vLLM's bucket boundaries for time to first token (seconds).</summary>
    public static IReadOnlyList<double> TimeToFirstTokenBuckets { get; } =
        [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0];

    /// <summary>
    /// vLLM's inter-token latency buckets (from 10 ms up), below them three finer ones: a small model's decode steps take
    /// a few milliseconds, which vLLM's first bucket would not tell apart.
    /// </summary>
    public static IReadOnlyList<double> InterTokenLatencyBuckets { get; } =
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];

    /// <summary>vLLM's bucket boundaries for end-to-end request latency (seconds).</summary>
    public static IReadOnlyList<double> RequestLatencyBuckets { get; } =
        [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0];

    /// <summary>Bucket boundaries for one batched decode step (seconds): 0.5 ms to 2.5 s.</summary>
    public static IReadOnlyList<double> DecodeStepBuckets { get; } =
        [0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5];

    /// <summary>Bucket boundaries for the sequences in one decode step.</summary>
    public static IReadOnlyList<double> BatchSizeBuckets { get; } = [1, 2, 4, 8, 16, 32, 64, 128, 256];

    private readonly Meter _meter;
    private readonly Histogram<double> _timeToFirstToken, _interTokenLatency, _requestLatency, _decodeStep;
    private readonly Histogram<int> _decodeStepSequences;
    private readonly Counter<long> _promptTokens, _generationTokens, _requestSuccess, _rejected, _mixedSteps, _mixedTokens, _mixedPieces;
    private readonly Counter<double> _mixedSeconds;
    private KeyValuePair<string, object?>[] _labels = [];
    private int _occupancy, _queueDepth, _cacheEntries, _cacheCapacity;
    private long _cacheHits, _cacheMisses, _cacheBytes, _finished, _cancelled, _mixedStepCount, _mixedPieceCount;

    public ServingMetrics()
    {
        _meter = new Meter(MeterName, typeof(ServingMetrics).Assembly.GetName().Version?.ToString());
        _timeToFirstToken = Histogram("xlstm_time_to_first_token_seconds", "s", "Time from queueing to the first token of a request.", TimeToFirstTokenBuckets);
        _interTokenLatency = Histogram("xlstm_inter_token_latency_seconds", "s", "Time between two tokens of one request.", InterTokenLatencyBuckets);
        _requestLatency = Histogram("xlstm_e2e_request_latency_seconds", "s", "Time from queueing to the last token of a completed request.", RequestLatencyBuckets);
        _decodeStep = Histogram("xlstm_decode_step_seconds", "s", "Time of one batched decode step.", DecodeStepBuckets);
        _decodeStepSequences = _meter.CreateHistogram("xlstm_decode_step_sequences", null, "Sequences decoded together in one step (batch occupancy).",
            tags: null, advice: new InstrumentAdvice<int> { HistogramBucketBoundaries = BatchSizeBuckets.Select(b => (int)b).ToArray() });
        _promptTokens = _meter.CreateCounter<long>("xlstm_prompt_tokens", null, "Prompt tokens of admitted requests.");
        _generationTokens = _meter.CreateCounter<long>("xlstm_generation_tokens", null, "Tokens generated.");
        _requestSuccess = _meter.CreateCounter<long>("xlstm_request_success", null, "Finished requests by finished_reason: stop, length or abort (the client went away).");
        _rejected = _meter.CreateCounter<long>("xlstm_requests_rejected", null, "Requests refused because the queue was full (HTTP 429).");
        _mixedSteps = _meter.CreateCounter<long>("xlstm_mixed_steps", null, "Decode steps that also read a prompt piece (the mixed graph).");
        _mixedTokens = _meter.CreateCounter<long>("xlstm_mixed_step_prompt_tokens", null, "Prompt tokens read inside decode steps.");
        _mixedPieces = _meter.CreateCounter<long>("xlstm_mixed_step_prompts", null, "Prompt pieces read inside decode steps (a step may carry several prompts).");
        _mixedSeconds = _meter.CreateCounter<double>("xlstm_mixed_step_seconds", "s", "Time of the decode steps that also read prompt pieces.");
        _meter.CreateObservableGauge("xlstm_num_requests_running", () => Observe(Occupancy), null, "Sequences in the batch.");
        _meter.CreateObservableGauge("xlstm_num_requests_waiting", () => Observe(QueueDepth), null, "Requests waiting for a slot.");
        // the state pool is what a KV cache is to a transformer server: named after vLLM's kv_cache_usage_perc (a fraction,
        // 0 to 1, despite the name), the gauge the Gateway API Inference Extension's endpoint picker reads (docs/routing.md)
        _meter.CreateObservableGauge("xlstm_kv_cache_usage_perc", () => Observe(Slots > 0 ? (double)Occupancy / Slots : 0.0), null,
            "Fraction of the state pool's slots in use (0 to 1): sequences in the batch over ServingOptions.MaxBatch.");
        _meter.CreateObservableCounter("xlstm_prefix_cache_queries", () => Observe(CacheHits + CacheMisses), null, "Prompts looked up in the prefix-state cache.");
        _meter.CreateObservableCounter("xlstm_prefix_cache_hits", () => Observe(CacheHits), null, "Prompts that started from a cached prefix state.");
        _meter.CreateObservableGauge("xlstm_prefix_cache_bytes", () => Observe(CacheBytes), null, "Bytes held by cached prefix states.");
        _meter.CreateObservableGauge("xlstm_prefix_cache_entries", () => Observe(CacheEntries), null, "Cached prefix states.");
        _meter.CreateObservableGauge("xlstm_prefix_cache_capacity", () => Observe(CacheCapacity), null, "Prefix states the cache can hold.");
    }

    /// <summary>The meter of these instruments (one per engine): an exporter can select exactly this engine's series.</summary>
    public Meter Meter => _meter;

    /// <summary>
    /// The <c>model_name</c> label of every series (as vLLM's), or null for none. Set it before the first request: series
    /// recorded before and after a change are different series.
    /// </summary>
    public string? ModelName
    {
        get => _labels.Length == 0 ? null : (string?)_labels[0].Value;
        set => _labels = string.IsNullOrEmpty(value) ? [] : [new("model_name", value)];
    }

    /// <summary>Sequences in the batch (set by the engine).</summary>
    public int Occupancy { get => Volatile.Read(ref _occupancy); set => Volatile.Write(ref _occupancy, value); }
    /// <summary>Slots of the state pool, ServingOptions.MaxBatch (set by the engine).</summary>
    public int Slots { get => Volatile.Read(ref _slots); set => Volatile.Write(ref _slots, value); }
    /// <summary>Requests waiting for a slot (set by the engine).</summary>
    public int QueueDepth { get => Volatile.Read(ref _queueDepth); set => Volatile.Write(ref _queueDepth, value); }
    /// <summary>Prompts that started from a cached prefix state, since the start (set by the engine).</summary>
    public long CacheHits { get => Volatile.Read(ref _cacheHits); set => Volatile.Write(ref _cacheHits, value); }
    /// <summary>Prompts looked up and not found in the prefix-state cache, since the start (set by the engine).</summary>
    public long CacheMisses { get => Volatile.Read(ref _cacheMisses); set => Volatile.Write(ref _cacheMisses, value); }
    /// <summary>Bytes held by the prefix-state cache (set by the engine).</summary>
    public long CacheBytes { get => Volatile.Read(ref _cacheBytes); set => Volatile.Write(ref _cacheBytes, value); }
    /// <summary>States held by the prefix-state cache (set by the engine).</summary>
    public int CacheEntries { get => Volatile.Read(ref _cacheEntries); set => Volatile.Write(ref _cacheEntries, value); }
    /// <summary>States the prefix-state cache can hold (set by the engine).</summary>
    public int CacheCapacity { get => Volatile.Read(ref _cacheCapacity); set => Volatile.Write(ref _cacheCapacity, value); }

    /// <summary>Requests that finished normally (not cancelled), since the start.</summary>
    public long FinishedRequests => Interlocked.Read(ref _finished);
    /// <summary>Decode steps that also read a prompt piece, since the start.</summary>
    public long MixedSteps => Interlocked.Read(ref _mixedStepCount);
    /// <summary>Prompt pieces read inside decode steps, since the start (more than <see cref="MixedSteps"/> when steps carried several).</summary>
    public long MixedPrompts => Interlocked.Read(ref _mixedPieceCount);
    /// <summary>Requests dropped because their client went away, since the start.</summary>
    public long CancelledRequests => Interlocked.Read(ref _cancelled);

    /// <summary>A request was refused: the queue was full.</summary>
    internal void Rejected() => _rejected.Add(1, _labels);

    /// <summary>
    /// A request left the engine before it had a slot (it waited in the queue): cancelled (its client went away;
    /// counted as finished_reason="abort"), or not.
    /// </summary>
    internal void Finished(bool cancelled)
    {
        if (!cancelled)
        {
            Interlocked.Increment(ref _finished);
            return;
        }
        Interlocked.Increment(ref _cancelled);
        _requestSuccess.Add(1, Label("finished_reason", "abort"));
    }

    /// <summary>
    /// A sequence left its slot, <paramref name="endToEnd"/> after it was queued: cancelled (finished_reason="abort"),
    /// or completed (the latency is recorded; its reason came through <see cref="Stopped"/>). Once per sequence.
    /// </summary>
    internal void Finished(bool cancelled, TimeSpan endToEnd)
    {
        if (cancelled)
        {
            Finished(cancelled: true);
            return;
        }
        Interlocked.Increment(ref _finished);
        _requestLatency.Record(endToEnd.TotalSeconds, _labels);
    }

    /// <summary>A sequence produced its last token, for <paramref name="reason"/>: counted by OpenAI's finish reason.</summary>
    internal void Stopped(StopReason reason) => _requestSuccess.Add(1, Label("finished_reason", FinishReason(reason)));

    /// <summary>OpenAI's finish_reason of a stop: "length" at the token limit, otherwise "stop".</summary>
    public static string FinishReason(StopReason reason) => reason switch
    {
        StopReason.MaxNewTokens => "length",
        StopReason.StopToken or StopReason.StopString => "stop",
        _ => throw new ArgumentOutOfRangeException(nameof(reason), reason, "a finished request has a stop reason"),
    };

    /// <summary>A request's prompt was admitted: <paramref name="n"/> tokens.</summary>
    internal void PromptTokens(int n) => _promptTokens.Add(n, _labels);

    /// <summary><paramref name="n"/> tokens were generated.</summary>
    internal void CompletionTokens(int n) => _generationTokens.Add(n, _labels);

    /// <summary>A request's first token, <paramref name="sinceArrival"/> after it was queued.</summary>
    internal void FirstToken(TimeSpan sinceArrival) => _timeToFirstToken.Record(sinceArrival.TotalSeconds, _labels);

    /// <summary>A request's next token, <paramref name="gap"/> after its previous one (per token after the first).</summary>
    internal void InterToken(TimeSpan gap) => _interTokenLatency.Record(gap.TotalSeconds, _labels);

    /// <summary>One batched decode step of <paramref name="sequences"/> sequences took <paramref name="elapsed"/>.</summary>
    internal void DecodeStep(TimeSpan elapsed, int sequences)
    {
        _decodeStep.Record(elapsed.TotalSeconds, _labels);
        _decodeStepSequences.Record(sequences, _labels);
    }

    /// <summary>A decode step of <paramref name="elapsed"/> also read <paramref name="promptTokens"/> tokens of <paramref name="prompts"/> prompts.</summary>
    internal void MixedStep(int promptTokens, int prompts, TimeSpan elapsed)
    {
        Interlocked.Increment(ref _mixedStepCount);
        Interlocked.Add(ref _mixedPieceCount, prompts);
        _mixedSteps.Add(1, _labels);
        _mixedTokens.Add(promptTokens, _labels);
        _mixedPieces.Add(prompts, _labels);
        _mixedSeconds.Add(elapsed.TotalSeconds, _labels);
    }

    public void Dispose() => _meter.Dispose();

    private Histogram<double> Histogram(string name, string unit, string description, IReadOnlyList<double> buckets) =>
        _meter.CreateHistogram(name, unit, description, tags: null, advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = buckets });

    private int _slots;

    private Measurement<T> Observe<T>(T value) where T : struct => new(value, _labels);

    private ReadOnlySpan<KeyValuePair<string, object?>> Label(string name, string value)
    {
        var labels = new KeyValuePair<string, object?>[_labels.Length + 1];
        _labels.CopyTo(labels, 0);
        labels[^1] = new(name, value);
        return labels;
    }
}
