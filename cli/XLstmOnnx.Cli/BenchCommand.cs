using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Cli;

/// <summary>
/// <c>xlstm-onnx bench --model DIR [--batch 1,16] [--prompt-tokens 2048] [--new-tokens 256] [--reps 3] [--device cpu|cuda] [--cuda-graph]
/// [--out FILE] [--profile PREFIX]</c>: time to first token, prefill tokens/s, decode tokens/s and ms/token per batch size,
/// and peak GPU memory, through the same Generator that generate and serve use. Prompts are seeded random ids;
/// decoding is greedy (on the device when the model has next_token) with EOS ignored. Each batch size is warmed up at
/// its full shapes first (arenas, cuBLAS plans, CUDA-graph capture), then timed <c>--reps</c> times; medians are reported.
/// </summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var batches = new Option<string>("--batch") { Description = "Comma-separated batch sizes.", DefaultValueFactory = _ => "1" };
        var prompt = new Option<int>("--prompt-tokens") { Description = "Prompt tokens per sequence.", DefaultValueFactory = _ => 512 };
        var newTokens = new Option<int>("--new-tokens") { Description = "Tokens decoded per sequence.", DefaultValueFactory = _ => 64 };
        var reps = new Option<int>("--reps") { Description = "Timed repetitions per batch size (medians are reported).", DefaultValueFactory = _ => 3 };
        var output = new Option<string?>("--out") { Description = "Write the results as JSON here." };
        var profile = new Option<string?>("--profile") { Description = "Write ONNX Runtime's per-node profile under this prefix (slows the run: its timings are not results)." };
        var cmd = new Command("bench", "Benchmark prefill and decode of an exported model.") { batches, prompt, newTokens, reps, output, profile };
        model.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            int p = r.GetValue(prompt), n = r.GetValue(newTokens), k = r.GetValue(reps);
            if (p < 1 || n < 2) throw new XLstmOnnxException($"options --prompt-tokens and --new-tokens must be at least 1 and 2; found {p} and {n}.");
            if (k < 1) throw new XLstmOnnxException($"option --reps must be at least 1; found {k}.");
            var sizes = SamplingOptions.ParseIds(r.GetValue(batches), "--batch");
            if (sizes.Length == 0 || sizes.Any(b => b < 1)) throw new XLstmOnnxException("option --batch needs batch sizes of at least 1, e.g. 1,16.");
            var load = Stopwatch.StartNew();
            using var session = model.Load(r, r.GetValue(profile));
            double loadSeconds = load.Elapsed.TotalSeconds;
            long afterLoad = GpuMemoryMiB();
            Console.WriteLine($"loaded in {loadSeconds:F1} s{(afterLoad < 0 ? "" : $", GPU {afterLoad} MiB")}; cuda graph: {(session.Options.CudaGraph ? "on" : "off")}, device argmax: {(session.Manifest.NextToken ? "on" : "off")}");
            var rows = new List<object>();
            Console.WriteLine($"{"batch",5}  {"prompt",6}  {"new",5}  {"TTFT ms",9}  {"prefill tok/s",13}  {"decode tok/s",12}  {"ms/token",9}  {"GPU MiB",8}");
            foreach (int b in sizes)
            {
                var m = Measure(session, b, p, n, k);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{b,5}  {p,6}  {n,5}  {m.TtftMs,9:F1}  {m.PrefillTps,13:F0}  {m.DecodeTps,12:F1}  {m.MsPerToken,9:F3}  {(m.GpuMiB < 0 ? "n/a" : m.GpuMiB.ToString(CultureInfo.InvariantCulture)),8}"));
                rows.Add(new
                {
                    batch = b, prompt = p, @new = n, reps = k, ttft_ms = m.TtftMs, prefill_tokens_per_s = m.PrefillTps, decode_tokens_per_s = m.DecodeTps,
                    ms_per_token = m.MsPerToken, peak_gpu_mib = m.GpuMiB, ttft_ms_all = m.TtftAll, ms_per_token_all = m.MsPerTokenAll,
                    device_argmax_mismatches = m.ArgMaxMismatches, first_tokens = m.FirstTokens, last_row_tokens = m.LastRowTokens,
                });
            }
            string? profileFile = r.GetValue(profile) is null ? null : session.EndProfiling();
            if (profileFile is not null) Console.WriteLine($"profile: {profileFile}");
            if (r.GetValue(output) is { } file)
            {
                var json = new
                {
                    command = "xlstm-onnx " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1)),
                    model = JsonDocument.Parse(session.Manifest.ToJson()).RootElement,
                    device = session.Options.Device.ToString().ToLowerInvariant(),
                    cuda_graph = session.Options.CudaGraph,
                    load_seconds = loadSeconds,
                    gpu_mib_after_load = afterLoad,
                    profile = profileFile,
                    results = rows,
                };
                AtomicFile.WriteAllText(file, JsonSerializer.Serialize(json, new JsonSerializerOptions { WriteIndented = true }) + "\n");
            }
            return 0;
        }));
        return cmd;
    }

    private sealed record Measurement(double TtftMs, double PrefillTps, double DecodeTps, double MsPerToken, long GpuMiB,
        double[] TtftAll, double[] MsPerTokenAll, int ArgMaxMismatches, int[] FirstTokens, int[] LastRowTokens);

    private static Measurement Measure(XLstmSession session, int batch, int promptLength, int newTokens, int reps)
    {
        var rng = new Random(1234 + batch);
        int vocab = (int)session.Manifest.VocabSize;
        var prompts = Enumerable.Range(0, batch).Select(_ => Enumerable.Range(0, promptLength).Select(_ => rng.Next(vocab)).ToArray()).ToArray();
        using var g = new Generator(session, batch);
        // warm-up at the timed shapes: arena growth, cuBLAS plans, and (with --cuda-graph) both graphs' capture
        g.Append(prompts);
        int mismatches = CheckArgMax(g);
        Step(g, batch);
        mismatches += CheckArgMax(g);
        for (int i = 0; i < 4; i++) Step(g, batch);
        long peak = GpuMemoryMiB();
        var ttfts = new double[reps];
        var perToken = new double[reps];
        var first = new int[batch];
        var lastRow = new List<int>(); // the last row's greedy tokens (first rep): equal across --cuda-graph on and off
        for (int rep = 0; rep < reps; rep++)
        {
            g.Reset();
            var clock = Stopwatch.StartNew();
            g.Append(prompts);
            var next = new int[batch];
            g.GreedyNext(next);
            ttfts[rep] = clock.Elapsed.TotalMilliseconds;
            if (rep == 0) next.CopyTo(first, 0);
            peak = Math.Max(peak, GpuMemoryMiB());
            clock.Restart();
            if (rep == 0) lastRow.Add(next[batch - 1]);
            for (int t = 1; t < newTokens; t++)
            {
                next = Step(g, batch, next);
                if (rep == 0 && lastRow.Count < 32) lastRow.Add(next[batch - 1]);
            }
            perToken[rep] = clock.Elapsed.TotalMilliseconds / (newTokens - 1);
            peak = Math.Max(peak, GpuMemoryMiB());
        }
        double ttft = Median(ttfts), ms = Median(perToken);
        return new Measurement(ttft, batch * promptLength / (ttft / 1000), batch * 1000 / ms, ms, peak, ttfts, perToken, mismatches, first, [.. lastRow]);
    }

    /// <summary>Rows where the device argmax (next_token) differs from the host argmax of the copied logits.</summary>
    private static int CheckArgMax(Generator g)
    {
        if (!g.HasDeviceArgMax) return 0;
        int bad = 0;
        for (int r = 0; r < g.Batch; r++) bad += g.GreedyNext(r) == Sampler.ArgMax(g.LastLogits(r)) ? 0 : 1;
        return bad;
    }

    private static int[] Step(Generator g, int batch, int[]? tokens = null)
    {
        if (tokens is null)
        {
            tokens = new int[batch];
            g.GreedyNext(tokens);
        }
        g.Append([.. tokens.Select(t => (IReadOnlyList<int>)new[] { t })]);
        var next = new int[batch];
        g.GreedyNext(next);
        return next;
    }

    private static double Median(double[] values)
    {
        var v = values.Order().ToArray();
        return v.Length % 2 == 1 ? v[v.Length / 2] : (v[v.Length / 2 - 1] + v[v.Length / 2]) / 2;
    }

    /// <summary>This process's GPU memory from nvidia-smi, or -1 where there is none.</summary>
    private static long GpuMemoryMiB()
    {
        try
        {
            var psi = new ProcessStartInfo("nvidia-smi", "--query-compute-apps=pid,used_memory --format=csv,noheader,nounits") { RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = Process.Start(psi)!;
            string text = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                var parts = line.Split(',', StringSplitOptions.TrimEntries);
                if (parts.Length == 2 && parts[0] == Environment.ProcessId.ToString(CultureInfo.InvariantCulture)) return long.Parse(parts[1], CultureInfo.InvariantCulture);
            }
            return -1;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return -1; // no nvidia-smi: no GPU
        }
    }
}
