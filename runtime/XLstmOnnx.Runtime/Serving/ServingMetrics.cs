using System.Globalization;
using System.Text;

namespace XLstmOnnx.Runtime.Serving;

/// <summary>Counters and gauges of a serving engine, written in Prometheus' text format.</summary>
public sealed class ServingMetrics
{
    private readonly object _lock = new();
    private long _finished, _cancelled, _rejected, _promptTokens, _completionTokens, _firstTokens, _decodeSteps, _decodeTokens;
    private double _ttftSum, _decodeSeconds, _e2eSum, _interTokenSum;
    private long _interTokens;

    public int Occupancy { get; set; }
    public int QueueDepth { get; set; }
    public long CacheHits { get; set; }
    public long CacheMisses { get; set; }
    public long CacheBytes { get; set; }
    public int CacheEntries { get; set; }
    public int CacheCapacity { get; set; }

    internal void Rejected() { lock (_lock) _rejected++; }
    internal void Finished(bool cancelled) { lock (_lock) { if (cancelled) _cancelled++; else _finished++; } }
    internal void Finished(bool cancelled, TimeSpan endToEnd) { lock (_lock) { if (cancelled) _cancelled++; else _finished++; _e2eSum += endToEnd.TotalSeconds; } }
    internal void InterToken(TimeSpan gap) { lock (_lock) { _interTokens++; _interTokenSum += gap.TotalSeconds; } }
    internal void PromptTokens(int n) { lock (_lock) _promptTokens += n; }
    internal void CompletionTokens(int n) { lock (_lock) _completionTokens += n; }
    internal void FirstToken(TimeSpan t) { lock (_lock) { _firstTokens++; _ttftSum += t.TotalSeconds; } }
    internal void DecodeStep(TimeSpan t, int sequences) { lock (_lock) { _decodeSteps++; _decodeTokens += sequences; _decodeSeconds += t.TotalSeconds; } }

    /// <summary>Requests that finished normally (for tests and logs).</summary>
    public long FinishedRequests { get { lock (_lock) return _finished; } }

    public string ToPrometheus(int maxBatch)
    {
        var sb = new StringBuilder();
        void Metric(string name, string type, string help, params (string Labels, double Value)[] values)
        {
            sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
            sb.Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');
            foreach (var (labels, value) in values) sb.Append(name).Append(labels).Append(' ').Append(value.ToString("R", CultureInfo.InvariantCulture)).Append('\n');
        }
        lock (_lock)
        {
            Metric("xlstm_requests_total", "counter", "Completions by outcome.",
                ("{status=\"finished\"}", _finished), ("{status=\"cancelled\"}", _cancelled), ("{status=\"rejected\"}", _rejected));
            Metric("xlstm_prompt_tokens_total", "counter", "Prompt tokens read.", ("", _promptTokens));
            Metric("xlstm_completion_tokens_total", "counter", "Tokens generated.", ("", _completionTokens));
            Metric("xlstm_time_to_first_token_seconds", "summary", "From queueing to the first token.", ("_sum", _ttftSum), ("_count", _firstTokens));
            Metric("xlstm_decode_step_seconds", "summary", "Batched decode steps.", ("_sum", _decodeSeconds), ("_count", _decodeSteps));
            Metric("xlstm_decode_tokens_per_second", "gauge", "Decode throughput over all steps so far.", ("", _decodeSeconds > 0 ? _decodeTokens / _decodeSeconds : 0));
            Metric("xlstm_batch_occupancy", "gauge", "Live sequences in the batch.", ("", Occupancy));
            Metric("xlstm_batch_slots", "gauge", "Slots in the batch.", ("", maxBatch));
            Metric("xlstm_queue_depth", "gauge", "Requests waiting for a slot.", ("", QueueDepth));
            Metric("xlstm_prefix_cache_hits_total", "counter", "Prompts that started from a cached prefix state.", ("", CacheHits));
            Metric("xlstm_prefix_cache_misses_total", "counter", "Prompts read from the start.", ("", CacheMisses));
            Metric("xlstm_prefix_cache_bytes", "gauge", "Bytes held by cached prefix states.", ("", CacheBytes));
            Metric("xlstm_prefix_cache_entries", "gauge", "Cached prefix states.", ("", CacheEntries));
        }
        return sb.ToString();
    }
}
