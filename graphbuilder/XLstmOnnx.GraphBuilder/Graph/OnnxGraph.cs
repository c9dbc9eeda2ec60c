using System.Globalization;
using System.Runtime.InteropServices;
using Google.Protobuf;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Onnx;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.GraphBuilder.Graph;

/// <summary>An ONNX attribute value, built with the static helpers.</summary>
public sealed class Attr
{
    internal AttributeProto Proto { get; }
    private Attr(AttributeProto p) => Proto = p;

    public static Attr Int(string name, long v) => new(new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = v });
    public static Attr Float(string name, double v) => new(new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = (float)v });
    public static Attr Str(string name, string v) => new(new() { Name = name, Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8(v) });
    public static Attr Ints(string name, params long[] v)
    {
        var p = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        p.Ints.AddRange(v);
        return new(p);
    }
    /// <summary>A one-element int64 tensor attribute (ConstantOfShape's value).</summary>
    public static Attr Int64Tensor(string name, long v)
    {
        var t = new TensorProto { DataType = (int)DataType.Int64 };
        t.Dims.Add(1);
        t.Int64Data.Add(v);
        return new(new() { Name = name, Type = AttributeProto.Types.AttributeType.Tensor, T = t });
    }
    public static Attr Graph(string name, OnnxGraph g) => new(new() { Name = name, Type = AttributeProto.Types.AttributeType.Graph, G = g.Proto });
}

/// <summary>
/// A GraphProto under construction: nodes named by their path through the model, outputs named after their node,
/// constants created once (in the root graph, visible from every subgraph), weights kept as lazy sources until the
/// exporter writes them. Knows nothing about xLSTM.
/// </summary>
public sealed class OnnxGraph
{
    private readonly OnnxGraph? _root;
    private readonly Dictionary<string, string> _constants = [];
    private readonly HashSet<string> _nodeNames = [];

    /// <summary>Weights by initializer name, in insertion order, with the element type they are stored in; written by the exporter.</summary>
    internal List<(string Name, IWeightSource Source, DataType Type)> Weights { get; } = [];

    public GraphProto Proto { get; }

    /// <summary>A root graph.</summary>
    public OnnxGraph(string name)
    {
        Proto = new GraphProto { Name = name };
    }

    private OnnxGraph(string name, OnnxGraph root) : this(name) => _root = root;

    /// <summary>A subgraph (Loop/If body) whose constants live in the root graph.</summary>
    public OnnxGraph Subgraph(string name) => new(name, _root ?? this);

    private OnnxGraph Root => _root ?? this;

    /// <summary>Adds a node; returns its outputs, named <c>{name}/output_{k}</c>.</summary>
    public string[] Node(string name, string opType, IReadOnlyList<string> inputs, int outputs = 1, string domain = "", params Attr[] attrs)
    {
        if (!Root._nodeNames.Add(name)) throw new InvalidOperationException($"duplicate node name {name}");
        var n = new NodeProto { Name = name, OpType = opType, Domain = domain };
        n.Input.AddRange(inputs);
        var outs = new string[outputs];
        for (int i = 0; i < outputs; i++) outs[i] = $"{name}/output_{i}";
        n.Output.AddRange(outs);
        foreach (var a in attrs) n.Attribute.Add(a.Proto);
        Proto.Node.Add(n);
        return outs;
    }

    /// <summary>A node whose optional outputs are left out where <paramref name="used"/> is false (their names come back empty).</summary>
    public string[] NodeWithOptionalOutputs(string name, string opType, IReadOnlyList<string> inputs, bool[] used, string domain = "", params Attr[] attrs)
    {
        var outs = Node(name, opType, inputs, used.Length, domain, attrs);
        var proto = Proto.Node[Proto.Node.Count - 1];
        for (int i = 0; i < used.Length; i++)
        {
            if (used[i]) continue;
            outs[i] = "";
            proto.Output[i] = "";
        }
        return outs;
    }

    /// <summary>Adds a single-output node and returns the output's name.</summary>
    public string Op(string name, string opType, IReadOnlyList<string> inputs, params Attr[] attrs) =>
        Node(name, opType, inputs, 1, "", attrs)[0];

    /// <summary>A float32 scalar constant, created once: <c>/model/constants/FLOAT/{value}</c>.</summary>
    public string Constant(float value) => Root.ConstantCore(
        $"{ConstantPrefix(DataType.Float)}{value.ToString("R", CultureInfo.InvariantCulture)}", DataType.Float, [],
        MemoryMarshal.AsBytes(new[] { value }.AsSpan()).ToArray());

    /// <summary>An int64 1-D constant (shapes, axes, indices), created once.</summary>
    public string Constant(params long[] values) => Root.ConstantCore(
        $"{ConstantPrefix(DataType.Int64)}[{string.Join(",", values)}]", DataType.Int64, [values.Length],
        MemoryMarshal.AsBytes(values.AsSpan()).ToArray());

    /// <summary>An int64 scalar (0-D) constant, created once.</summary>
    public string ScalarInt64(long value) => Root.ConstantCore(
        $"{ConstantPrefix(DataType.Int64)}{value}", DataType.Int64, [], BitConverter.GetBytes(value));

    /// <summary>A bool scalar constant.</summary>
    public string ScalarBool(bool value) => Root.ConstantCore(
        $"{ConstantPrefix(DataType.Bool)}{value}", DataType.Bool, [], [value ? (byte)1 : (byte)0]);

    /// <summary>
    /// A vector of <paramref name="length"/> copies of <paramref name="value"/> in <paramref name="type"/> (float32,
    /// float16 or bfloat16), created once: <c>/model/constants/FLOAT16/1x32</c> is 32 ones in float16.
    /// </summary>
    public string Filled(float value, long length, DataType type)
    {
        var values = new float[length];
        Array.Fill(values, value);
        string name = $"{ConstantPrefix(type)}{value.ToString("R", CultureInfo.InvariantCulture)}x{length}";
        return Root.ConstantCore(name, type, [length], WeightBytes.Encode(values, type));
    }

    /// <summary>The bool [n, n] matrix that is true on and below the diagonal, created once: <c>/model/constants/BOOL/tril_8x8</c>.</summary>
    public string LowerTriangular(long n)
    {
        var mask = new byte[n * n];
        for (long j = 0; j < n; j++)
        {
            for (long s = 0; s <= j; s++) mask[j * n + s] = 1;
        }
        return Root.ConstantCore($"{ConstantPrefix(DataType.Bool)}tril_{n}x{n}", DataType.Bool, [n, n], mask);
    }

    /// <summary>Where constants of <paramref name="type"/> are named: <c>/model/constants/{TYPE}/</c>, the type as ONNX spells it.</summary>
    public static string ConstantPrefix(DataType type) => $"/model/constants/{type.ToString().ToUpperInvariant()}/";

    private string ConstantCore(string name, DataType type, long[] shape, byte[] raw)
    {
        if (_constants.TryGetValue(name, out var existing)) return existing;
        var t = new TensorProto { Name = name, DataType = (int)type, RawData = ByteString.CopyFrom(raw) };
        t.Dims.AddRange(shape);
        Proto.Initializer.Add(t);
        _constants[name] = name;
        return name;
    }

    /// <summary>
    /// A weight initializer whose values the exporter streams from <paramref name="source"/>, stored as
    /// <paramref name="type"/> (float32, float16 or bfloat16; rounded to nearest even).
    /// </summary>
    public string Weight(string name, IWeightSource source, DataType type = DataType.Float)
    {
        if (_root is not null) return _root.Weight(name, source, type);
        if (type is not (DataType.Float or DataType.Float16 or DataType.Bfloat16)) throw new ArgumentOutOfRangeException(nameof(type), type, "weights are float32, float16 or bfloat16");
        // a tied weight (lm_head = embeddings) is one source: write it once, under its first name
        foreach (var (existing, s, t) in Weights)
        {
            if (ReferenceEquals(s, source) && t == type) return existing;
        }
        Weights.Add((name, source, type));
        return name;
    }

    /// <summary>Initializers given as bytes made on demand (quantized weights), written after <see cref="Weights"/>.</summary>
    internal List<(string Name, DataType Type, long[] Shape, long Bytes, Func<byte[]> Make)> RawWeights { get; } = [];

    /// <summary>An initializer whose raw little-endian bytes <paramref name="make"/> produces when the exporter writes it.</summary>
    public string RawWeight(string name, DataType type, long[] shape, long bytes, Func<byte[]> make)
    {
        if (_root is not null) return _root.RawWeight(name, type, shape, bytes, make);
        RawWeights.Add((name, type, shape, bytes, make));
        return name;
    }

    /// <summary>Declares a graph input. A dim is a long (fixed), a string (symbolic) or null (unknown).</summary>
    public string Input(string name, DataType type, params object?[]? dims)
    {
        Proto.Input.Add(ValueInfo(name, type, dims));
        return name;
    }

    /// <summary>Declares a graph output produced by <paramref name="value"/> under the name <paramref name="name"/>.</summary>
    public void Output(string name, string value, DataType type, params object?[]? dims)
    {
        if (name != value)
        {
            // Graph outputs carry contract names (logits, present_state.*), so the last node is an Identity renaming the path-named value.
            var n = new NodeProto { Name = $"{name}/Identity", OpType = "Identity" };
            n.Input.Add(value);
            n.Output.Add(name);
            Proto.Node.Add(n);
        }
        Proto.Output.Add(ValueInfo(name, type, dims));
    }

    /// <summary>A value with an element type and, if <paramref name="dims"/> is not null, a shape.</summary>
    public static ValueInfoProto ValueInfo(string name, DataType type, object?[]? dims)
    {
        var tt = new TypeProto.Types.Tensor { ElemType = (int)type };
        if (dims is not null)
        {
            tt.Shape = new TensorShapeProto();
            foreach (var d in dims)
            {
                var dim = new TensorShapeProto.Types.Dimension();
                switch (d)
                {
                    case long l: dim.DimValue = l; break;
                    case int i: dim.DimValue = i; break;
                    case string s: dim.DimParam = s; break;
                }
                tt.Shape.Dim.Add(dim);
            }
        }
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = tt } };
    }
}
