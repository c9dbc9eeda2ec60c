using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Generation;

namespace XLstmOnnx.Cli;

/// <summary>
/// <c>xlstm-onnx bench --model DIR [--batch 1,16] [--prompt 2048] [--new 256] [--device cpu|cuda] [--out FILE]</c>:
/// time to first token, prefill tokens/s, decode tokens/s and ms/token per batch size, and peak GPU memory, through the
/// same Generator that generate and serve use. Prompts are seeded random ids; decoding is greedy with EOS ignored.
/// </summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var batches = new Option<string>("--batch") { Description = "Comma-separated batch sizes.", DefaultValueFactory = _ => "1" };
        var prompt = new Option<int>("--prompt") { Description = "Prompt tokens per sequence.", DefaultValueFactory = _ => 512 };
        var newTokens = new Option<int>("--new") { Description = "Tokens decoded per sequence.", DefaultValueFactory = _ => 64 };
        var output = new Option<string?>("--out") { Description = "Write the results as JSON here." };
        var cmd = new Command("bench", "Benchmark prefill and decode of an exported model.") { batches, prompt, newTokens, output };
        model.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            int p = r.GetValue(prompt), n = r.GetValue(newTokens);
            if (p < 1 || n < 1) throw new XLstmOnnxException($"options --prompt and --new must be at least 1; found {p} and {n}.");
            var sizes = SamplingOptions.ParseIds(r.GetValue(batches), "--batch");
            if (sizes.Length == 0 || sizes.Any(b => b < 1)) throw new XLstmOnnxException("option --batch needs batch sizes of at least 1, e.g. 1,16.");
            using var session = model.Load(r);
            var rows = new List<object>();
            Console.WriteLine($"{"batch",5}  {"prompt",6}  {"new",5}  {"TTFT ms",9}  {"prefill tok/s",13}  {"decode tok/s",12}  {"ms/token",9}  {"GPU MiB",8}");
            foreach (int b in sizes)
            {
                var m = Measure(session, b, p, n);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{b,5}  {p,6}  {n,5}  {m.TtftMs,9:F1}  {m.PrefillTps,13:F0}  {m.DecodeTps,12:F1}  {m.MsPerToken,9:F3}  {(m.GpuMiB < 0 ? "n/a" : m.GpuMiB.ToString(CultureInfo.InvariantCulture)),8}"));
                rows.Add(new { batch = b, prompt = p, @new = n, ttft_ms = m.TtftMs, prefill_tokens_per_s = m.PrefillTps, decode_tokens_per_s = m.DecodeTps, ms_per_token = m.MsPerToken, peak_gpu_mib = m.GpuMiB });
            }
            if (r.GetValue(output) is { } file)
            {
                var json = new
                {
                    command = "xlstm-onnx " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1)),
                    model = JsonDocument.Parse(session.Manifest.ToJson()).RootElement,
                    device = session.Options.Device.ToString().ToLowerInvariant(),
                    results = rows,
                };
                File.WriteAllText(file, JsonSerializer.Serialize(json, new JsonSerializerOptions { WriteIndented = true }) + "\n");
            }
            return 0;
        }));
        return cmd;
    }

    private sealed record Measurement(double TtftMs, double PrefillTps, double DecodeTps, double MsPerToken, long GpuMiB);

    private static Measurement Measure(XLstmSession session, int batch, int promptLength, int newTokens)
    {
        var rng = new Random(1234 + batch);
        int vocab = (int)session.Manifest.VocabSize;
        var prompts = Enumerable.Range(0, batch).Select(_ => Enumerable.Range(0, promptLength).Select(_ => rng.Next(vocab)).ToArray()).ToArray();
        using var g = new Generator(session, batch);
        // warm-up: kernels, arenas and (on CUDA) cuBLAS handles for both the prefill and the step shapes
        g.Append([.. prompts.Select(p => p[..Math.Min(16, p.Length)])]);
        Step(g, batch);
        Step(g, batch);
        g.Reset();
        long peak = GpuMemoryMiB();
        var clock = Stopwatch.StartNew();
        g.Append(prompts);
        var next = new int[batch];
        for (int r = 0; r < batch; r++) next[r] = Sampler.ArgMax(g.LastLogits(r));
        double ttft = clock.Elapsed.TotalMilliseconds;
        peak = Math.Max(peak, GpuMemoryMiB());
        clock.Restart();
        for (int t = 1; t < newTokens; t++) next = Step(g, batch, next);
        double decode = clock.Elapsed.TotalSeconds;
        peak = Math.Max(peak, GpuMemoryMiB());
        int steps = Math.Max(1, newTokens - 1);
        return new Measurement(ttft, batch * promptLength / (ttft / 1000), decode > 0 ? batch * steps / decode : 0, decode * 1000 / steps, peak);
    }

    private static int[] Step(Generator g, int batch, int[]? tokens = null)
    {
        tokens ??= Enumerable.Range(0, batch).Select(r => Sampler.ArgMax(g.LastLogits(r))).ToArray();
        g.Append([.. tokens.Select(t => (IReadOnlyList<int>)new[] { t })]);
        var next = new int[batch];
        for (int r = 0; r < batch; r++) next[r] = Sampler.ArgMax(g.LastLogits(r));
        return next;
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
