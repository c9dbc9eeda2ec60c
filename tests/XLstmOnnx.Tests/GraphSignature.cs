using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using XLstmOnnx.GraphBuilder.Graph;
using XLstmOnnx.GraphBuilder.Onnx;

namespace XLstmOnnx.Tests;

/// <summary>
/// What an exported graph is, with every node, value and initializer name left out: node counts, the multiset of
/// (domain, op type), the contract's inputs and outputs, and a hash of the wiring. Two graphs that differ only in
/// names have the same signature; an added, removed or rewired node, a changed attribute or constant changes it.
/// </summary>
internal sealed record GraphSignature(
    int Nodes, int AllNodes, SortedDictionary<string, int> Ops, IReadOnlyList<string> Inputs, IReadOnlyList<string> Outputs,
    int Constants, int Weights, string Structure)
{
    /// <summary>The signature of <paramref name="graph"/> as the builder left it (weights not yet written).</summary>
    public static GraphSignature Of(OnnxGraph graph)
    {
        var weights = graph.Weights.ToDictionary(w => w.Name, w => $"weight:{w.Type}{Dims(w.Source.Shape)}");
        foreach (var w in graph.RawWeights) weights[w.Name] = $"raw:{w.Type}{Dims(w.Shape)}";
        var constants = graph.Proto.Initializer.ToDictionary(
            t => t.Name, t => $"const:{(TensorProto.Types.DataType)t.DataType}{Dims(t.Dims)}:{Hash(t.RawData.ToByteArray())[..12]}");

        // every node output, in every graph level, by name: what produces it
        var producers = new Dictionary<string, string>(StringComparer.Ordinal);
        var all = new List<(NodeProto Node, int Depth, Dictionary<string, string> BodyInputs)>();
        void Walk(GraphProto g, int depth, Dictionary<string, string> bodyInputs)
        {
            foreach (var n in g.Node)
            {
                all.Add((n, depth, bodyInputs));
                for (int k = 0; k < n.Output.Count; k++) producers[n.Output[k]] = $"{OpKey(n)}#{k}";
                foreach (var a in n.Attribute.Where(a => a.G is not null))
                {
                    var inner = new Dictionary<string, string>(bodyInputs, StringComparer.Ordinal);
                    for (int k = 0; k < a.G.Input.Count; k++) inner[a.G.Input[k].Name] = $"body_in:{depth + 1}:{k}";
                    Walk(a.G, depth + 1, inner);
                }
            }
        }
        Walk(graph.Proto, 0, []);

        var inputs = graph.Proto.Input.ToDictionary(i => i.Name, i => $"in:{i.Name}");
        string Source(string name, Dictionary<string, string> bodyInputs) =>
            name.Length == 0 ? "-"
            : bodyInputs.TryGetValue(name, out var b) ? b
            : producers.TryGetValue(name, out var p) ? p
            : inputs.TryGetValue(name, out var i) ? i
            : constants.TryGetValue(name, out var c) ? c
            : weights.TryGetValue(name, out var w) ? w
            : throw new InvalidOperationException($"value '{name}' has no producer, input or initializer");

        var keys = all.Select(x =>
            $"{x.Depth}|{OpKey(x.Node)}|{string.Join(",", x.Node.Attribute.OrderBy(a => a.Name, StringComparer.Ordinal).Select(AttrKey))}"
            + $"|{string.Join(",", x.Node.Input.Select(i => Source(i, x.BodyInputs)))}|{x.Node.Output.Count(o => o.Length > 0)}")
            .Order(StringComparer.Ordinal);
        var ops = new SortedDictionary<string, int>(StringComparer.Ordinal);
        foreach (var (n, _, _) in all) ops[OpKey(n)] = ops.GetValueOrDefault(OpKey(n)) + 1;
        return new GraphSignature(
            graph.Proto.Node.Count, all.Count, ops,
            [.. graph.Proto.Input.Select(ValueKey)], [.. graph.Proto.Output.Select(ValueKey)],
            graph.Proto.Initializer.Count, graph.Weights.Count + graph.RawWeights.Count,
            Hash(Encoding.UTF8.GetBytes(string.Join("\n", keys))));
    }

    private static string OpKey(NodeProto n) => n.Domain.Length == 0 ? n.OpType : $"{n.Domain}::{n.OpType}";

    private static string AttrKey(AttributeProto a) => a.Type switch
    {
        AttributeProto.Types.AttributeType.Int => $"{a.Name}={a.I}",
        AttributeProto.Types.AttributeType.Float => $"{a.Name}={a.F.ToString("R", CultureInfo.InvariantCulture)}",
        AttributeProto.Types.AttributeType.String => $"{a.Name}='{a.S.ToStringUtf8()}'",
        AttributeProto.Types.AttributeType.Ints => $"{a.Name}=[{string.Join(" ", a.Ints)}]",
        // a body graph: its size and formal inputs and outputs; its nodes are walked (and keyed) on their own
        AttributeProto.Types.AttributeType.Graph => $"{a.Name}=graph({a.G.Node.Count} nodes, {a.G.Input.Count} in, {a.G.Output.Count} out)",
        _ => throw new InvalidOperationException($"attribute '{a.Name}' of type {a.Type} is not covered by the signature"),
    };

    private static string ValueKey(ValueInfoProto v)
    {
        var t = v.Type.TensorType;
        string dims = t.Shape is null ? "?" : $"[{string.Join(",", t.Shape.Dim.Select(d => d.DimParam.Length > 0 ? d.DimParam : d.DimValue.ToString(CultureInfo.InvariantCulture)))}]";
        return $"{v.Name}:{(TensorProto.Types.DataType)t.ElemType}{dims}";
    }

    private static string Dims(IEnumerable<long> dims) => $"[{string.Join(",", dims)}]";

    private static string Hash(byte[] bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));
}
