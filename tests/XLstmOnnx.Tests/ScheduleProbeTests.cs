using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Architecture;
using XLstmOnnx.GraphBuilder.Config;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.GraphBuilder.Graph;
using XLstmOnnx.GraphBuilder.Onnx;
using XLstmOnnx.Runtime;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.Tests;

/// <summary>
/// Which form ran where: the chunkwise and the recurrent form agree to rounding, so agreement with transformers cannot
/// tell them apart. This probe can. A forget gate of −1e7 at every third token makes the chunkwise form's float32
/// cumulative sum b (sequential, as torch's cumsum, in both cells) jump to −1e7, where float32's spacing is 1: every
/// later b in that chunk is rounded to an integer, so the decays exp(b_j − b_s) inside a chunk after such a token are
/// exp of an integer instead of exp(Σ logσ(f̃)) (the gates between are logσ of [−2, 1]: −0.3 to −2.1). The recurrent
/// form adds each logσ(f̃) to a small m and has no such rounding. So the cell's output equals a reference that runs
/// HF's schedule (<see cref="Schedule.Pieces"/>: the chunkwise form with b rounded to float32 as the cells round it,
/// the recurrent form exactly) only when the cell ran that schedule: a segment run recurrently, chunks cut elsewhere,
/// or a tail run chunkwise each move outputs by tenths. Both cells: the standard-op Loop (<see cref="MLstmCellEmitter"/>)
/// and the custom op (ai.xlstm::MLstmChunkwise, CPU kernel).
/// </summary>
[TestFixture]
public class ScheduleProbeTests
{
    private const int Heads = 2, Dqk = 4, Dv = 8;

    // 1e-4: the cells compute in float32 what the reference computes in double from the same rounded b, so outputs of
    // order 1 differ by float32 rounding of sums over L·DQK terms and exp (~1e-6); a wrong form moves them by ≥ 1e-2.
    private const double Tolerance = 1e-4;

    /// <summary>(S, L, max_inference_chunksize): segments with chunks and tails, chunks only, a tail only, one step.</summary>
    private static readonly object[] Cases =
    [
        new object[] { 41L, 8L, 20L },    // segments 20 + 20 + 1: C8 C8 R×4 per segment, then a step
        new object[] { 37L, 16L, 16384L }, // C16 C16 R×5
        new object[] { 12L, 4L, 5L },     // segments of 5: C4 R, C4 R, R R
        new object[] { 24L, 8L, 16384L }, // chunks only
        new object[] { 7L, 8L, 16384L },  // a tail only: all recurrent
    ];

    private sealed record Probe(long S, float[] Q, float[] K, float[] V, float[] I, float[] F);

    private static Probe MakeProbe(long s)
    {
        var rng = new Random(1234);
        float[] R(long n, double lo, double hi) => [.. Enumerable.Range(0, (int)n).Select(_ => (float)(lo + (hi - lo) * rng.NextDouble()))];
        var f = R(Heads * s, -2, 1);
        for (int h = 0; h < Heads; h++)
        {
            for (long t = 0; t < s; t += 3) f[h * s + t] = -1e7f; // logσ(−1e7) = −1e7 exactly
        }
        return new Probe(s, R(Heads * s * Dqk, -1, 1), R(Heads * s * Dqk, -1, 1), R(Heads * s * Dv, -1, 1), R(Heads * s, -1, 1), f);
    }

    private static double LogSigmoid(double x) => Math.Min(x, 0) - Math.Log(1 + Math.Exp(-Math.Abs(x)));

    /// <summary>
    /// h [NH, S, DV] of the cell run on <paramref name="pieces"/> from a zero state: chunk pieces in the chunkwise form
    /// (docs/hf-semantics.md, "Chunkwise form") with b summed in float32, one-token pieces in the recurrent form
    /// (docs/hf-semantics.md, "Recurrent step"); everything else in double.
    /// </summary>
    private static double[] Reference(Probe p, IEnumerable<SchedulePiece> pieces)
    {
        long s = p.S;
        double scale = 1 / Math.Sqrt(Dqk), eps = 1e-6;
        var hOut = new double[Heads * s * Dv];
        var list = pieces.ToList();
        for (int head = 0; head < Heads; head++)
        {
            double Q(long t, int d) => p.Q[(head * s + t) * Dqk + d];
            double K(long t, int d) => p.K[(head * s + t) * Dqk + d];
            double V(long t, int e) => p.V[(head * s + t) * Dv + e];
            double I(long t) => p.I[head * s + t];
            double F(long t) => p.F[head * s + t];
            var c = new double[Dqk, Dv];
            var n = new double[Dqk];
            double m = 0;
            foreach (var piece in list)
            {
                long t0 = piece.Start;
                int len = (int)piece.Length;
                if (!piece.IsChunk)
                {
                    double lf = LogSigmoid(F(t0)), mNew = Math.Max(lf + m, I(t0));
                    double fa = Math.Exp(lf + m - mNew), ia = Math.Exp(I(t0) - mNew);
                    for (int d = 0; d < Dqk; d++)
                    {
                        for (int e = 0; e < Dv; e++) c[d, e] = fa * c[d, e] + ia * K(t0, d) * V(t0, e);
                        n[d] = fa * n[d] + ia * K(t0, d);
                    }
                    double qn = 0;
                    var num = new double[Dv];
                    for (int d = 0; d < Dqk; d++)
                    {
                        qn += Q(t0, d) * scale * n[d];
                        for (int e = 0; e < Dv; e++) num[e] += Q(t0, d) * scale * c[d, e];
                    }
                    double den = Math.Max(Math.Abs(qn), Math.Exp(-mNew)) + eps;
                    for (int e = 0; e < Dv; e++) hOut[(head * s + t0) * Dv + e] = num[e] / den;
                    m = mNew;
                    continue;
                }
                // b_j = Σ_{r≤j} logσ(f̃_r), summed in float32 as both cells sum it
                var b = new float[len];
                float acc = 0;
                for (int j = 0; j < len; j++) b[j] = acc += (float)LogSigmoid(F(t0 + j));
                double g = b[len - 1];
                for (int j = 0; j < len; j++)
                {
                    double mInter = b[j] + m, mIntra = double.NegativeInfinity;
                    for (int r = 0; r <= j; r++) mIntra = Math.Max(mIntra, (double)(b[j] - b[r]) + I(t0 + r));
                    double mj = Math.Max(mInter, mIntra), qScale = Math.Exp(mInter - mj) * scale;
                    var num = new double[Dv];
                    double qn = 0;
                    for (int d = 0; d < Dqk; d++)
                    {
                        qn += Q(t0 + j, d) * qScale * n[d];
                        for (int e = 0; e < Dv; e++) num[e] += Q(t0 + j, d) * qScale * c[d, e];
                    }
                    for (int r = 0; r <= j; r++)
                    {
                        double qk = 0;
                        for (int d = 0; d < Dqk; d++) qk += Q(t0 + j, d) * K(t0 + r, d);
                        double w = qk * scale * Math.Exp((double)(b[j] - b[r]) + I(t0 + r) - mj);
                        qn += w;
                        for (int e = 0; e < Dv; e++) num[e] += w * V(t0 + r, e);
                    }
                    double den = Math.Max(Math.Abs(qn), Math.Exp(-mj)) + eps;
                    for (int e = 0; e < Dv; e++) hOut[(head * s + t0 + j) * Dv + e] = num[e] / den;
                }
                var a = Enumerable.Range(0, len).Select(j => (double)(float)(g - b[j]) + I(t0 + j)).ToArray();
                double mNext = Math.Max(g + m, a.Max()), gBar = Math.Exp(g + m - mNext);
                for (int d = 0; d < Dqk; d++)
                {
                    for (int e = 0; e < Dv; e++) c[d, e] *= gBar;
                    n[d] *= gBar;
                }
                for (int j = 0; j < len; j++)
                {
                    double aBar = Math.Exp(a[j] - mNext);
                    for (int d = 0; d < Dqk; d++)
                    {
                        for (int e = 0; e < Dv; e++) c[d, e] += aBar * K(t0 + j, d) * V(t0 + j, e);
                        n[d] += aBar * K(t0 + j, d);
                    }
                }
                m = mNext;
            }
        }
        return hOut;
    }

    /// <summary>Every token in the recurrent form: what a cell that ignored the chunk size would compute.</summary>
    private static IEnumerable<SchedulePiece> AllRecurrent(long s)
    {
        for (long t = 0; t < s; t++) yield return new SchedulePiece(t, 1, false);
    }

    /// <summary>The fields the cell reads: DQK (its scale), chunk size, segment length and eps; the sizes are the probe's.</summary>
    private static XLstmConfig Config(long chunk, long segment) => new()
    {
        HiddenSize = 8, EmbeddingDim = 8, NumHeads = Heads, QkDimFactor = 1.0, VDimFactor = 2.0, ChunkSize = chunk, MaxInferenceChunksize = segment,
    };

    /// <summary>One cell on its own: inputs q, k, v, igate, fgate, C, n, m; output h.</summary>
    private static byte[] CellModel(long chunk, long segment, bool custom)
    {
        var config = Config(chunk, segment);
        Assert.That((config.QkHeadDim, config.VHeadDim), Is.EqualTo(((long)Dqk, (long)Dv)), "the probe's head sizes");
        var g = new OnnxGraph("probe");
        string[] names = ["q", "k", "v", "igate", "fgate", "C", "n", "m"];
        object[][] dims = [[1L, (long)Heads, "S", (long)Dqk], [1L, (long)Heads, "S", (long)Dqk], [1L, (long)Heads, "S", (long)Dv],
            [1L, (long)Heads, "S"], [1L, (long)Heads, "S"], [1L, (long)Heads, (long)Dqk, (long)Dv], [1L, (long)Heads, (long)Dqk], [1L, (long)Heads, 1L]];
        for (int i = 0; i < names.Length; i++) g.Input(names[i], DataType.Float, dims[i]);
        string h;
        if (custom)
        {
            h = g.Node($"/cell/{CustomOps.Chunkwise}", CustomOps.Chunkwise, names, 4, CustomOps.Domain,
                Attr.Int("chunk_size", chunk), Attr.Int("max_inference_chunksize", segment), Attr.Float("eps", config.Eps))[0];
        }
        else
        {
            h = new MLstmCellEmitter(g, config).Emit("/cell", "q", "k", "v", "igate", "fgate", new CellState("C", "n", "m")).H;
        }
        g.Output("h", h, DataType.Float, [1L, (long)Heads, "S", (long)Dv]);
        var model = new ModelProto { IrVersion = ExportOptions.IrVersion, Graph = g.Proto };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = ExportOptions.Opset });
        if (custom) model.OpsetImport.Add(new OperatorSetIdProto { Domain = CustomOps.Domain, Version = CustomOps.DomainVersion });
        return model.ToByteArray();
    }

    private static float[] RunCell(long chunk, long segment, bool custom, Probe p)
    {
        using var options = new SessionOptions();
        if (custom)
        {
            options.RegisterCustomOpLibrary(CustomOpLibrary.Find() ?? throw new AssertionException(
                $"{CustomOpLibrary.FileName} is not beside the tests: run them through ./build.sh --target=Test."));
        }
        using var session = new InferenceSession(CellModel(chunk, segment, custom), options);
        long s = p.S;
        (float[] Data, long[] Shape)[] inputs =
        [
            (p.Q, [1, Heads, s, Dqk]), (p.K, [1, Heads, s, Dqk]), (p.V, [1, Heads, s, Dv]), (p.I, [1, Heads, s]), (p.F, [1, Heads, s]),
            (new float[Heads * Dqk * Dv], [1, Heads, Dqk, Dv]), (new float[Heads * Dqk], [1, Heads, Dqk]), (new float[Heads], [1, Heads, 1]),
        ];
        var values = inputs.Select(x => OrtValue.CreateTensorValueFromMemory(x.Data, x.Shape)).ToList();
        try
        {
            using var run = new RunOptions();
            using var outputs = session.Run(run, ["q", "k", "v", "igate", "fgate", "C", "n", "m"], values, ["h"]);
            return outputs[0].GetTensorDataAsSpan<float>().ToArray();
        }
        finally
        {
            foreach (var v in values) v.Dispose();
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void TheStandardOpCellRunsHfsSchedule(long s, long chunk, long segment) => Check(s, chunk, segment, custom: false);

    [TestCaseSource(nameof(Cases))]
    public void TheCustomOpRunsHfsSchedule(long s, long chunk, long segment) => Check(s, chunk, segment, custom: true);

    private static void Check(long s, long chunk, long segment, bool custom)
    {
        var p = MakeProbe(s);
        var pieces = new Schedule(chunk, segment).Pieces(s).ToList();
        double[] expected = Reference(p, pieces), recurrent = Reference(p, AllRecurrent(s));
        float[] actual = RunCell(chunk, segment, custom, p);
        Assert.That(actual, Has.Length.EqualTo(expected.Length));
        // per token: the largest error over heads and DV
        var worst = new double[s];
        for (int i = 0; i < actual.Length; i++)
        {
            long t = i / Dv % s;
            worst[t] = Math.Max(worst[t], Math.Abs(actual[i] - expected[i]) / (1 + Math.Abs(expected[i])));
        }
        var wrong = Enumerable.Range(0, (int)s).Where(t => !(worst[t] <= Tolerance)).ToList();
        Assert.That(wrong, Is.Empty, $"tokens that did not run in HF's form (schedule {string.Join(" ", pieces.Select(x => $"{(x.IsChunk ? 'C' : 'R')}{x.Length}@{x.Start}"))}); worst {worst.Max():E2}");
        // the probe has power wherever a chunk holds a token after a −1e7 gate: the all-recurrent answer is far off there
        bool chunked = pieces.Any(x => x.IsChunk && x.Length > 1);
        double gap = expected.Zip(recurrent, (a, b) => Math.Abs(a - b)).Max();
        if (chunked) Assert.That(gap, Is.GreaterThan(100 * Tolerance), "the chunkwise and recurrent forms differ on the probe");
        else Assert.That(gap, Is.LessThan(Tolerance), "no chunk: the schedule is all recurrent");
    }
}
