using System.CommandLine;
using System.Globalization;
using XLstmOnnx.Runtime;

namespace XLstmOnnx.Cli;

/// <summary><c>xlstm-onnx verify --model DIR --reference FILE [--atol 1e-4] [--rtol 1e-3]</c></summary>
internal static class VerifyCommand
{
    public const int Mismatch = 1;

    public static Command Create()
    {
        var model = new ModelOptions(cudaGraph: false);
        var reference = new Option<string>("--reference") { Description = "Reference safetensors file (format: tools/reference/README.md).", Required = true };
        var atol = new Option<double>("--atol") { Description = "Absolute tolerance.", DefaultValueFactory = _ => 1e-4 };
        var rtol = new Option<double>("--rtol") { Description = "Relative tolerance: a value fails when |actual − expected| > atol + rtol·|expected|.", DefaultValueFactory = _ => 1e-3 };
        var cmd = new Command("verify", "Run every case of a reference file and compare logits, states, step logits and greedy ids.") { reference, atol, rtol };
        model.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            double a = r.GetValue(atol), t = r.GetValue(rtol);
            if (a < 0 || t < 0) throw new XLstmOnnxException($"options --atol and --rtol must be non-negative; found {a} and {t}.");
            using var session = model.Load(r);
            var results = ReferenceVerifier.Verify(session, r.GetValue(reference)!, a, t, name => Console.Error.WriteLine($"verify: case {name}"));
            Print(results, a, t);
            int failed = results.Count(x => !x.Passed);
            Console.WriteLine(failed == 0
                ? $"PASS: {results.Count} checks within atol {a.ToString(CultureInfo.InvariantCulture)} + rtol {t.ToString(CultureInfo.InvariantCulture)}·|expected|"
                : $"FAIL: {failed} of {results.Count} checks have values outside atol {a.ToString(CultureInfo.InvariantCulture)} + rtol {t.ToString(CultureInfo.InvariantCulture)}·|expected|");
            return failed == 0 ? 0 : Mismatch;
        }));
        return cmd;
    }

    /// <summary>Plain aligned text: readable in a terminal and in CI logs alike (no wrapping).</summary>
    private static void Print(IReadOnlyList<CheckResult> results, double atol, double rtol)
    {
        int w1 = Math.Max(4, results.Max(r => r.Case.Length)), w2 = Math.Max(5, results.Max(r => r.Check.Length));
        // columns are whitespace-separated words up to the note (tools/gpu/*.sh read them by position): rel L2 is
        // ‖actual − expected‖₂ / ‖expected‖₂ over the check's values, "-" where there is none (greedy ids)
        Console.WriteLine($"{"case".PadRight(w1)}  {"check".PadRight(w2)}  {"values",8}  {"max abs err",11}  {"max rel err",11}  {"outside",7}  {"rel L2",9}  note");
        foreach (var r in results)
        {
            string l2 = double.IsNaN(r.RelativeL2) && r.Check == "greedy_ids" ? "-" : r.RelativeL2.ToString("E2", CultureInfo.InvariantCulture);
            Console.WriteLine($"{r.Case.PadRight(w1)}  {r.Check.PadRight(w2)}  {r.Values,8}  {r.MaxAbsError,11:E2}  {r.MaxRelError,11:E2}  {r.Violations,7}  {l2,9}  {(r.Passed ? "" : "FAIL ")}{r.Note}");
        }
    }
}
