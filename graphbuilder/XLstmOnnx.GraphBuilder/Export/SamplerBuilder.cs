using Google.Protobuf;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Architecture;
using XLstmOnnx.GraphBuilder.Graph;
using XLstmOnnx.GraphBuilder.Onnx;
using static XLstmOnnx.Contract.SamplerModel;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.GraphBuilder.Export;

/// <summary>
/// Writes <c>sampler.onnx</c> (its contract: <see cref="SamplerModel"/>): the next token of every row of a batch from its
/// last logits, on whatever device the logits are (it runs in a session on the model's execution provider, so only B ids
/// come back to the host). One algorithm for greedy and sampled rows: the row's logit bias, transformers' repetition
/// penalty, OpenAI's frequency and presence penalties (vLLM's order), then in transformers' order temperature, top-k,
/// top-p, min-p, then a draw with the row's own uniform number (the host's seeded generator per
/// sequence: the same seed gives the same draws alone or in a batch). Standard ONNX ops only, so CPU and CUDA run the
/// same graph.
/// <para>
/// The draw walks the candidates from the most likely down (a stable sort: ties by lower id), subtracting
/// probabilities from u·total, as the runtime's reference sampler does; sums are taken in float64 (as the reference).
/// </para>
/// </summary>
public static class SamplerBuilder
{
    /// <summary>Tests only: the distribution each row draws from, [B, V] double, by rank (ids in <see cref="ProbeOrder"/>).</summary>
    internal const string ProbeProbabilities = "probe_probabilities";

    /// <summary>Tests only: the ids by falling score, [B, V] int64 (ties: lower id first).</summary>
    internal const string ProbeOrder = "probe_order";

    /// <summary>The sampler for a vocabulary of <paramref name="vocab"/> logits.</summary>
    public static byte[] Build(long vocab) => Build(vocab, probe: false);

    /// <summary>
    /// <paramref name="probe"/>: also output <see cref="ProbeProbabilities"/> and <see cref="ProbeOrder"/>, the draw's
    /// distribution, for tests against transformers' probabilities (the exported sampler has no such outputs, so its
    /// runs compute nothing more).
    /// </summary>
    internal static byte[] Build(long vocab, bool probe)
    {
        var g = new OnnxGraph("sampler");
        g.Input(Logits, DataType.Float, "batch", 1L, vocab);
        g.Input(Params, DataType.Double, "batch", (long)ParamCount);
        g.Input(Counts, DataType.Float, "batch", vocab);
        g.Input(OutputCounts, DataType.Float, "batch", vocab);
        g.Input(Bias, DataType.Float, "batch", vocab);
        g.Input(VocabLimit, DataType.Int64, 1L);

        string Col(int c, string name) => g.Op($"/sampler/params/{name}/Slice", "Slice", [Params, g.Constant(c), g.Constant(c + 1), g.Constant(1)]); // [B,1] double
        string AsFloat(string x, string name) => g.Op($"/sampler/params/{name}/Cast", "Cast", [x], Attr.Int("to", (long)DataType.Float));

        // x [B,V]: the logits with ids past the tokenizer masked to -inf
        string flat = g.Op("/sampler/logits/Reshape", "Reshape", [Logits, g.Constant(0, vocab)]);
        string ids = g.Op("/sampler/vocab/Range", "Range", [g.ScalarInt64(0), g.ScalarInt64(vocab), g.ScalarInt64(1)]);            // [V]
        string inVocab = g.Op("/sampler/vocab/Less", "Less", [ids, VocabLimit]);                                                    // [V]
        string x = g.Op("/sampler/vocab/Where", "Where", [inVocab, flat, g.Constant(float.NegativeInfinity)]);

        // OpenAI's logit_bias, added first (vLLM applies it before the penalties)
        string biased = g.Op("/sampler/bias/Add", "Add", [x, Bias]);

        // transformers' RepetitionPenaltyLogitsProcessor: seen ids' positive logits divided, negative multiplied
        string penalty = AsFloat(Col(RepetitionPenalty, "repetition_penalty"), "repetition_penalty");                            // [B,1]
        string seen = g.Op("/sampler/penalty/Greater", "Greater", [Counts, g.Constant(0f)]);
        string positive = g.Op("/sampler/penalty/GreaterPositive", "Greater", [biased, g.Constant(0f)]);
        string divided = g.Op("/sampler/penalty/Div", "Div", [biased, penalty]);
        string multiplied = g.Op("/sampler/penalty/Mul", "Mul", [biased, penalty]);
        string penalised = g.Op("/sampler/penalty/WherePositive", "Where", [positive, divided, multiplied]);
        string repeated = g.Op("/sampler/penalty/WhereSeen", "Where", [seen, penalised, biased]);                                // [B,V]

        // OpenAI's penalties over the output only: logits - frequency·count - presence·(count > 0) (vLLM's order)
        string frequency = AsFloat(Col(FrequencyPenalty, "frequency_penalty"), "frequency_penalty");                             // [B,1]
        string presence = AsFloat(Col(PresencePenalty, "presence_penalty"), "presence_penalty");
        string byCount = g.Op("/sampler/frequency/Mul", "Mul", [OutputCounts, frequency]);
        string afterFrequency = g.Op("/sampler/frequency/Sub", "Sub", [repeated, byCount]);
        string present = g.Op("/sampler/presence/Cast", "Cast", [g.Op("/sampler/presence/Greater", "Greater", [OutputCounts, g.Constant(0f)])], Attr.Int("to", (long)DataType.Float));
        string byPresence = g.Op("/sampler/presence/Mul", "Mul", [present, presence]);
        string scores = g.Op("/sampler/presence/Sub", "Sub", [afterFrequency, byPresence]);                                     // [B,V]

        string greedyId = g.Op("/sampler/greedy/ArgMax", "ArgMax", [scores], Attr.Int("axis", 1), Attr.Int("keepdims", 1));     // [B,1], first max

        // temperature, then every id sorted by score (ties: lower id first)
        string scaled = g.Op("/sampler/temperature/Mul", "Mul", [scores, AsFloat(Col(InvTemperature, "inv_temperature"), "inv_temperature")]);
        string[] sortedAndOrder = g.Node("/sampler/sort/TopK", "TopK", [scaled, g.Constant(vocab)], 2, "",
            Attr.Int("axis", 1), Attr.Int("largest", 1), Attr.Int("sorted", 1));
        string sorted = sortedAndOrder[0], order = sortedAndOrder[1];                                                            // [B,V]
        string top = g.Op("/sampler/sort/Max", "Slice", [sorted, g.Constant(0), g.Constant(1), g.Constant(1)]);                 // [B,1]
        string shifted = g.Op("/sampler/probs/Sub", "Sub", [sorted, top]);
        string expf = g.Op("/sampler/probs/Exp", "Exp", [shifted]);                                                              // keys, float: exp(0) = 1 first
        string e = g.Op("/sampler/probs/Cast", "Cast", [expf], Attr.Int("to", (long)DataType.Double));

        // top-k: ranks below k (0 keeps all)
        string rank = g.Op("/sampler/topk/Range", "Range", [g.Op("/sampler/topk/Zero", "Cast", [g.ScalarInt64(0)], Attr.Int("to", (long)DataType.Double)),
            g.Op("/sampler/topk/Limit", "Cast", [g.ScalarInt64(vocab)], Attr.Int("to", (long)DataType.Double)),
            g.Op("/sampler/topk/One", "Cast", [g.ScalarInt64(1)], Attr.Int("to", (long)DataType.Double))]);                       // [V] double
        string k = Col(TopK, "top_k");
        string kOn = g.Op("/sampler/topk/Greater", "Greater", [k, g.Op("/sampler/topk/ZeroK", "Cast", [g.Constant(0f)], Attr.Int("to", (long)DataType.Double))]);
        string kEff = g.Op("/sampler/topk/Where", "Where", [kOn, k, g.Op("/sampler/topk/All", "Cast", [g.Constant((float)vocab)], Attr.Int("to", (long)DataType.Double))]);
        string keepK = g.Op("/sampler/topk/Less", "Less", [rank, kEff]);                                                       // [B,V]
        string eK = g.Op("/sampler/topk/Mask", "Mul", [e, g.Op("/sampler/topk/CastMask", "Cast", [keepK], Attr.Int("to", (long)DataType.Double))]);

        // top-p: keep a candidate while the probability before it is below p (the smallest prefix reaching p); p = 1 keeps all
        string totalK = g.Op("/sampler/topp/ReduceSum", "ReduceSum", [eK, g.Constant(1)], Attr.Int("keepdims", 1));
        string before = g.Op("/sampler/topp/CumSum", "CumSum", [eK, g.ScalarInt64(1)], Attr.Int("exclusive", 1));
        string beforeP = g.Op("/sampler/topp/Div", "Div", [before, totalK]);
        string p = Col(TopP, "top_p");
        string keepP = g.Op("/sampler/topp/Or", "Or", [
            g.Op("/sampler/topp/Less", "Less", [beforeP, p]),
            g.Op("/sampler/topp/Off", "GreaterOrEqual", [p, g.Op("/sampler/topp/One", "Cast", [g.Constant(1f)], Attr.Int("to", (long)DataType.Double))])]);

        // min-p: at least min_p times the most likely candidate's weight (which is exp(0) = 1)
        string keepM = g.Op("/sampler/minp/GreaterOrEqual", "GreaterOrEqual", [e, Col(MinP, "min_p")]);

        string keep = g.Op("/sampler/keep/AndM", "And", [g.Op("/sampler/keep/AndKP", "And", [keepK, keepP]), keepM]);
        string kept = g.Op("/sampler/draw/Mask", "Mul", [e, g.Op("/sampler/draw/CastKeep", "Cast", [keep], Attr.Int("to", (long)DataType.Double))]);
        string total = g.Op("/sampler/draw/ReduceSum", "ReduceSum", [kept, g.Constant(1)], Attr.Int("keepdims", 1));
        string target = g.Op("/sampler/draw/Target", "Mul", [Col(Uniform, "uniform"), total]);
        string cum = g.Op("/sampler/draw/CumSum", "CumSum", [kept, g.ScalarInt64(1)]);
        // the first candidate whose running sum passes u·total: the number of running sums at or below it, within the kept ones
        string passed = g.Op("/sampler/draw/LessOrEqual", "LessOrEqual", [cum, target]);
        string at = g.Op("/sampler/draw/Count", "ReduceSum", [g.Op("/sampler/draw/CastPassed", "Cast", [passed], Attr.Int("to", (long)DataType.Int64)), g.Constant(1)], Attr.Int("keepdims", 1));
        string keptCount = g.Op("/sampler/draw/KeptCount", "ReduceSum", [g.Op("/sampler/draw/CastKeepCount", "Cast", [keep], Attr.Int("to", (long)DataType.Int64)), g.Constant(1)], Attr.Int("keepdims", 1));
        string last = g.Op("/sampler/draw/Last", "Sub", [keptCount, g.Constant(1)]);
        string chosenRank = g.Op("/sampler/draw/Min", "Min", [at, last]);                                                       // [B,1]
        string sampledId = g.Op("/sampler/draw/GatherElements", "GatherElements", [order, chosenRank], Attr.Int("axis", 1));

        string greedy = g.Op("/sampler/greedy/Greater", "Greater", [Col(Greedy, "greedy"), g.Op("/sampler/greedy/Half", "Cast", [g.Constant(0.5f)], Attr.Int("to", (long)DataType.Double))]);
        string chosen = g.Op("/sampler/next/Where", "Where", [greedy, greedyId, sampledId]);                                    // [B,1] int64
        // a row whose raw logits (all V, the padded ids too) are not all finite chooses nothing: the runtime ends it
        string nonFinite = g.Op("/sampler/finite/Unsqueeze", "Unsqueeze", [XLstmGraphBuilder.NonFiniteRows(g, "/sampler", flat, 1), g.Constant(1)]); // [B,1]
        string next = g.Op("/sampler/next/WhereFinite", "Where", [nonFinite, g.Constant(GraphNames.NonFiniteToken), chosen]);

        string logSoftmax = g.Op("/sampler/logprob/LogSoftmax", "LogSoftmax", [x], Attr.Int("axis", 1));
        string logProb = g.Op("/sampler/logprob/GatherElements", "GatherElements", [logSoftmax, next], Attr.Int("axis", 1));
        // OpenAI's top_logprobs: the most likely ids of the raw distribution (sorted; ties: lower id first)
        int topCount = TopCountFor(vocab);
        string[] topValuesAndIds = g.Node("/sampler/top/TopK", "TopK", [logSoftmax, g.Constant((long)topCount)], 2, "",
            Attr.Int("axis", 1), Attr.Int("largest", 1), Attr.Int("sorted", 1));

        string counted = g.Op("/sampler/counts/GatherElements", "GatherElements", [Counts, next], Attr.Int("axis", 1));
        string plusOne = g.Op("/sampler/counts/Add", "Add", [counted, g.Constant(1f)]);
        string countsOut = g.Op("/sampler/counts/ScatterElements", "ScatterElements", [Counts, next, plusOne], Attr.Int("axis", 1));
        string outputCounted = g.Op("/sampler/output_counts/GatherElements", "GatherElements", [OutputCounts, next], Attr.Int("axis", 1));
        string outputPlusOne = g.Op("/sampler/output_counts/Add", "Add", [outputCounted, g.Constant(1f)]);
        string outputCountsOut = g.Op("/sampler/output_counts/ScatterElements", "ScatterElements", [OutputCounts, next, outputPlusOne], Attr.Int("axis", 1));

        if (probe)
        {
            g.Output(ProbeProbabilities, g.Op("/sampler/probe/Div", "Div", [kept, total]), DataType.Double, "batch", vocab);
            g.Output(ProbeOrder, order, DataType.Int64, "batch", vocab);
        }
        g.Output(NextToken, next, DataType.Int64, "batch", 1L);
        g.Output(LogProb, logProb, DataType.Float, "batch", 1L);
        g.Output(CountsOut, countsOut, DataType.Float, "batch", vocab);
        g.Output(OutputCountsOut, outputCountsOut, DataType.Float, "batch", vocab);
        g.Output(TopIds, topValuesAndIds[1], DataType.Int64, "batch", (long)topCount);
        g.Output(TopLogProbs, topValuesAndIds[0], DataType.Float, "batch", (long)topCount);
        var model = new ModelProto { IrVersion = ExportOptions.IrVersion, ProducerName = "XLstmOnnx", Graph = g.Proto, DocString = "xlstm-onnx sampler v" + SamplerModel.Version };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = ExportOptions.Opset });
        return model.ToByteArray();
    }
}
