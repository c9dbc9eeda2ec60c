using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Config;

namespace XLstmOnnx.Tests;

/// <summary>
/// A plain, slow C# xLSTM (double precision, recurrent form token by token; docs/hf-semantics.md, "The forward pass"
/// and "Recurrent step") over bound weights: an oracle independent of the ONNX graph's chunkwise form and of ONNX
/// Runtime.
/// </summary>
internal sealed class ReferenceXLstm
{
    private readonly XLstmConfig _c;
    private readonly BoundWeights _w;
    private readonly Dictionary<IWeightSource, float[]> _cache = [];

    public ReferenceXLstm(XLstmConfig config, BoundWeights weights)
    {
        _c = config;
        _w = weights;
    }

    /// <summary>Per layer: C [NH,DQK,DV], n [NH,DQK], m [NH] of one sequence.</summary>
    public sealed class State(XLstmConfig c)
    {
        public double[][] C { get; } = Enumerable.Range(0, (int)c.NumBlocks).Select(_ => new double[c.NumHeads * c.QkHeadDim * c.VHeadDim]).ToArray();
        public double[][] N { get; } = Enumerable.Range(0, (int)c.NumBlocks).Select(_ => new double[c.NumHeads * c.QkHeadDim]).ToArray();
        public double[][] M { get; } = Enumerable.Range(0, (int)c.NumBlocks).Select(_ => new double[c.NumHeads]).ToArray();
    }

    private float[] W(IWeightSource s)
    {
        if (!_cache.TryGetValue(s, out var a)) _cache[s] = a = s.ToArray();
        return a;
    }

    /// <summary>Logits of one token given the state (updated in place).</summary>
    public double[] Step(long token, State st)
    {
        int H = (int)_c.HiddenSize;
        var x = new double[H];
        var emb = W(_w[WeightRole.Embedding]);
        for (int j = 0; j < H; j++) x[j] = emb[token * H + j];
        for (int i = 0; i < _c.NumBlocks; i++)
        {
            var u = Rms(x, W(_w[WeightRole.NormMlstm, i]), Opt(WeightRole.NormMlstmBias, i));
            var y = Mlstm(i, u, st);
            for (int j = 0; j < H; j++) x[j] += y[j];
            u = Rms(x, W(_w[WeightRole.NormFfn, i]), Opt(WeightRole.NormFfnBias, i));
            var gz = Linear(u, _w[WeightRole.FfnUpGateZ, i], Opt(WeightRole.FfnUpGateZBias, i));
            int up = (int)_c.FfnDim;
            var z = new double[up];
            for (int j = 0; j < up; j++) z[j] = gz[j] / (1 + Math.Exp(-gz[j])) * gz[up + j];
            y = Linear(z, _w[WeightRole.FfnDown, i], Opt(WeightRole.FfnDownBias, i));
            for (int j = 0; j < H; j++) x[j] += y[j];
        }
        x = Rms(x, W(_w[WeightRole.OutNorm]), null);
        var logits = Linear(x, _w[WeightRole.LmHead], null);
        if (_c.OutputLogitSoftCap is { } cap) for (int j = 0; j < logits.Length; j++) logits[j] = cap * Math.Tanh(logits[j] / cap);
        return logits;
    }

    private float[]? Opt(WeightRole r, int i) => _w.Optional(r, i) is { } s ? W(s) : null;

    private double[] Mlstm(int i, double[] u, State st)
    {
        int nh = (int)_c.NumHeads, dqk = (int)_c.QkHeadDim, dv = (int)_c.VHeadDim, qk = (int)_c.QkDim, v = (int)_c.VDim;
        var qkvo = Linear(u, _w[WeightRole.QkvoProj, i], Opt(WeightRole.QkvoProjBias, i));
        var gates = Linear(u, _w[WeightRole.IfGate, i], W(_w[WeightRole.IfGateBias, i]));
        if (_c.GateSoftCap is { } cap) for (int j = 0; j < gates.Length; j++) gates[j] = cap * Math.Tanh(gates[j] / cap);
        double s = 1.0 / Math.Sqrt(dqk);
        var hn = new double[v];
        for (int h = 0; h < nh; h++)
        {
            double ig = gates[h], lf = -Math.Log(1 + Math.Exp(-gates[nh + h]));
            double mOld = st.M[i][h], mNew = Math.Max(lf + mOld, ig);
            double fa = Math.Exp(lf + mOld - mNew), ia = Math.Exp(ig - mNew);
            var C = st.C[i]; var n = st.N[i];
            for (int a = 0; a < dqk; a++)
            {
                double k = qkvo[qk + h * dqk + a];
                for (int b = 0; b < dv; b++)
                {
                    int idx = (h * dqk + a) * dv + b;
                    C[idx] = fa * C[idx] + ia * k * qkvo[2 * qk + h * dv + b];
                }
                n[h * dqk + a] = fa * n[h * dqk + a] + ia * k;
            }
            st.M[i][h] = mNew;
            double qn = 0;
            var num = new double[dv];
            for (int a = 0; a < dqk; a++)
            {
                double q = qkvo[h * dqk + a] * s;
                qn += q * n[h * dqk + a];
                for (int b = 0; b < dv; b++) num[b] += q * C[(h * dqk + a) * dv + b];
            }
            double den = Math.Max(Math.Abs(qn), Math.Exp(-mNew)) + _c.Eps;
            double mean = num.Average() / den, var_ = 0;
            for (int b = 0; b < dv; b++) var_ += Math.Pow(num[b] / den - mean, 2);
            var_ /= dv;
            for (int b = 0; b < dv; b++) hn[h * dv + b] = (num[b] / den - mean) / Math.Sqrt(var_ + _c.NormEps);
        }
        var mw = W(_w[WeightRole.MultiheadNorm, i]);
        var mb = Opt(WeightRole.MultiheadNormBias, i);
        var ho = new double[v];
        for (int j = 0; j < v; j++)
        {
            double o = qkvo[2 * qk + v + j];
            ho[j] = 1 / (1 + Math.Exp(-o)) * (hn[j] * mw[j] + (mb?[j] ?? 0));
        }
        return Linear(ho, _w[WeightRole.OutProj, i], Opt(WeightRole.OutProjBias, i));
    }

    private double[] Rms(double[] x, float[] w, float[]? b)
    {
        double ms = x.Sum(a => a * a) / x.Length, r = 1 / Math.Sqrt(ms + _c.NormEps);
        var y = new double[x.Length];
        for (int j = 0; j < x.Length; j++) y[j] = x[j] * r * w[j] + (b?[j] ?? 0);
        return y;
    }

    private double[] Linear(double[] x, IWeightSource weight, float[]? bias)
    {
        var w = W(weight);
        int outDim = (int)weight.Shape[0], inDim = (int)weight.Shape[1];
        var y = new double[outDim];
        for (int o = 0; o < outDim; o++)
        {
            double acc = bias?[o] ?? 0;
            for (int j = 0; j < inDim; j++) acc += w[o * inDim + j] * x[j];
            y[o] = acc;
        }
        return y;
    }
}
