using System.Text.RegularExpressions;
using XLstmOnnx.Contract;
using XLstmOnnx.GraphBuilder.Architecture;
using XLstmOnnx.GraphBuilder.Checkpoint;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.GraphBuilder.Graph;
using XLstmOnnx.GraphBuilder.Onnx;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.Tests;

/// <summary>
/// Names are paths through the model: a node by where it sits (<c>/model/blocks.3/mlstm/qkvo_proj/Gemm</c>), a weight
/// by the module that reads it (<c>model.blocks.3.mlstm.qkvo_proj.weight</c>), a constant by its type and value
/// (<c>/model/constants/FLOAT/15</c>), and a block's nodes, the residual adds included, by that block.
/// </summary>
[TestFixture]
public partial class GraphNamingTests
{
    public static IEnumerable<TestCaseData> Cases()
    {
        foreach (var dir in Directory.EnumerateDirectories(TestPaths.Fixtures).Order(StringComparer.Ordinal))
        {
            foreach (var kernels in new[] { MLstmKernels.Onnx, MLstmKernels.Custom })
            {
                yield return new TestCaseData(dir, kernels, null).SetName($"names {Path.GetFileName(dir)} {kernels}");
            }
        }
        string fused = Path.Combine(TestPaths.Fixtures, "fused_bias");
        yield return new TestCaseData(fused, MLstmKernels.Custom, 4).SetName("names fused_bias Custom int4");
        yield return new TestCaseData(fused, MLstmKernels.Onnx, 4).SetName("names fused_bias Onnx int4");
    }

    [GeneratedRegex(@"^/model/blocks\.(\d+)/")]
    private static partial Regex BlockPath();

    private static int? BlockOf(string nodeName) => BlockPath().Match(nodeName) is { Success: true } m ? int.Parse(m.Groups[1].Value) : null;

    [TestCaseSource(nameof(Cases))]
    public void NamesArePathsThroughTheModel(string dir, MLstmKernels kernels, int? quantizeBits)
    {
        using var ckpt = HfCheckpoint.Open(dir);
        var weights = new WeightTable(ckpt.Config).Bind(ckpt.Tensors, dir);
        var graph = XLstmGraphBuilder.Build(ckpt.Config, weights, new ExportOptions { MLstmKernels = kernels, QuantizeBits = quantizeBits });
        var nodes = graph.Proto.Node.ToList();
        var producer = nodes.SelectMany(n => n.Output.Where(o => o.Length > 0).Select(o => (o, n.Name))).ToDictionary(x => x.o, x => x.Name);
        var weightNames = graph.Weights.Select(w => w.Name).Concat(graph.RawWeights.Select(w => w.Name)).ToHashSet();
        var contract = graph.Proto.Output.Select(o => $"{o.Name}/Identity").ToHashSet();
        Assert.Multiple(() =>
        {
            foreach (var n in nodes)
            {
                Assert.That(n.Name.StartsWith("/model/", StringComparison.Ordinal) || contract.Contains(n.Name), $"node '{n.Name}' is a path under /model/");
            }
            foreach (var t in graph.Proto.Initializer)
            {
                Assert.That(t.Name, Does.StartWith(OnnxGraph.ConstantPrefix((DataType)t.DataType)), "constants are named by type and value");
            }
            foreach (var w in weightNames)
            {
                // the module path of at least one reader: model.blocks.3.mlstm.qkvo_proj.* is read by /model/blocks.3/mlstm/qkvo_proj/Gemm
                // (a tied lm_head reads the embedding under the embedding's name)
                var readers = nodes.Where(n => n.Input.Contains(w)).Select(n => n.Name).ToList();
                Assert.That(readers, Is.Not.Empty, $"weight '{w}' is read");
                Assert.That(readers.Any(r => w.StartsWith(GraphContext.InitName(r[..r.LastIndexOf('/')], ""), StringComparison.Ordinal)),
                    $"weight '{w}' is named after the module that reads it ({string.Join(", ", readers)})");
            }
            foreach (var n in nodes.Where(n => BlockOf(n.Name) is not null))
            {
                int block = BlockOf(n.Name)!.Value;
                foreach (var input in n.Input.Where(producer.ContainsKey))
                {
                    int? from = BlockOf(producer[input]);
                    Assert.That(from is null || from <= block, $"{n.Name} (block {block}) reads {producer[input]} of a later block");
                }
                foreach (var w in n.Input.Where(weightNames.Contains))
                {
                    Assert.That(w, Does.StartWith($"model.blocks.{block}."), $"{n.Name} reads its own block's weights");
                }
            }
            // every FFN residual add still written as an Add is named by the block whose FFN output it adds
            var adds = nodes.Where(n => n.Name.EndsWith("/ffn_residual/Add", StringComparison.Ordinal)).ToList();
            Assert.That(adds, Is.Not.Empty);
            foreach (var add in adds)
            {
                int block = BlockOf(add.Name)!.Value;
                Assert.That(add.Input.Select(i => producer.GetValueOrDefault(i, "")),
                    Has.Some.StartWith($"/model/blocks.{block}/ffn/proj_down/"), $"{add.Name} adds block {block}'s FFN output");
            }
        });
    }
}
