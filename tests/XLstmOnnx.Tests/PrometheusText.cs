using System.Globalization;
using System.Text;

namespace XLstmOnnx.Tests;

/// <summary>One sample line of Prometheus' text format: <c>name{label="value",...} value</c>.</summary>
internal sealed record PrometheusSample(string Name, IReadOnlyDictionary<string, string> Labels, double Value)
{
    /// <summary>True when every label of <paramref name="labels"/> has that value here (others may be present too).</summary>
    public bool Has(IReadOnlyDictionary<string, string> labels) => labels.All(l => Labels.TryGetValue(l.Key, out var v) && v == l.Value);
}

/// <summary>One series of a histogram: its cumulative buckets (by upper bound, +Inf last), sum and count.</summary>
internal sealed record PrometheusHistogram(IReadOnlyList<(double Le, double Count)> Buckets, double Sum, double Count);

/// <summary>
/// A strict reader of Prometheus' text exposition format (version 0.0.4), for tests: a line it does not understand is
/// an error, not skipped, so a malformed exposition fails the test that scrapes it.
/// </summary>
internal sealed class PrometheusText
{
    private PrometheusText(IReadOnlyDictionary<string, string> types, IReadOnlyList<PrometheusSample> samples)
    {
        Types = types;
        Samples = samples;
    }

    /// <summary>Metric family name to its # TYPE (counter, gauge, histogram, summary, untyped).</summary>
    public IReadOnlyDictionary<string, string> Types { get; }

    public IReadOnlyList<PrometheusSample> Samples { get; }

    public static PrometheusText Parse(string text)
    {
        var types = new Dictionary<string, string>();
        var samples = new List<PrometheusSample>();
        int number = 0;
        foreach (string line in text.Split('\n'))
        {
            number++;
            if (line.Length == 0) continue;
            if (line.StartsWith('#'))
            {
                var parts = line.Split(' ', 4);
                switch (parts.Length >= 2 ? parts[1] : "")
                {
                    case "TYPE" when parts.Length == 4:
                        if (!types.TryAdd(parts[2], parts[3])) throw new FormatException($"line {number}: a second # TYPE for {parts[2]}.");
                        break;
                    case "HELP" when parts.Length >= 3:
                    case "EOF":
                        break;
                    default:
                        throw new FormatException($"line {number}: unknown comment '{line}'.");
                }
                continue;
            }
            samples.Add(ParseSample(line, number));
        }
        return new PrometheusText(types, samples);
    }

    /// <summary>
    /// The sum of the samples that match <paramref name="selector"/> (<c>name</c> or <c>name{label="value",...}</c>);
    /// 0 when none does (a counter that was never incremented is not exported).
    /// </summary>
    public double Value(string selector)
    {
        var (name, labels) = ParseSelector(selector);
        return Samples.Where(s => s.Name == name && s.Has(labels)).Sum(s => s.Value);
    }

    /// <summary>The histogram <paramref name="name"/> for the series that has <paramref name="labels"/> (exactly one).</summary>
    public PrometheusHistogram Histogram(string name, IReadOnlyDictionary<string, string>? labels = null)
    {
        labels ??= new Dictionary<string, string>();
        if (!Types.TryGetValue(name, out var type) || type != "histogram") throw new FormatException($"{name} is not declared a histogram (# TYPE {type ?? "missing"}).");
        var buckets = Samples.Where(s => s.Name == name + "_bucket" && s.Has(labels))
            .Select(s => (Le: ParseDouble(s.Labels.TryGetValue("le", out var le) ? le : throw new FormatException($"{name}_bucket without le.")), s.Value))
            .ToList();
        var sums = Samples.Where(s => s.Name == name + "_sum" && s.Has(labels)).ToList();
        var counts = Samples.Where(s => s.Name == name + "_count" && s.Has(labels)).ToList();
        if (sums.Count != 1 || counts.Count != 1) throw new FormatException($"{name}: {sums.Count} _sum and {counts.Count} _count series match; expected one of each.");
        return new PrometheusHistogram(buckets, sums[0].Value, counts[0].Value);
    }

    private static PrometheusSample ParseSample(string line, int number)
    {
        int i = 0;
        while (i < line.Length && (char.IsAsciiLetterOrDigit(line[i]) || line[i] is '_' or ':')) i++;
        if (i == 0) throw new FormatException($"line {number}: no metric name in '{line}'.");
        string name = line[..i];
        var labels = new Dictionary<string, string>();
        if (i < line.Length && line[i] == '{')
        {
            i++;
            while (line[i] != '}')
            {
                int eq = line.IndexOf('=', i);
                if (eq < 0 || line[eq + 1] != '"') throw new FormatException($"line {number}: bad label in '{line}'.");
                string key = line[i..eq];
                var value = new StringBuilder();
                int j = eq + 2;
                for (; line[j] != '"'; j++)
                {
                    if (line[j] == '\\')
                    {
                        j++;
                        value.Append(line[j] switch { 'n' => '\n', '\\' => '\\', '"' => '"', _ => throw new FormatException($"line {number}: bad escape in '{line}'.") });
                    }
                    else value.Append(line[j]);
                }
                if (!labels.TryAdd(key, value.ToString())) throw new FormatException($"line {number}: label {key} twice.");
                i = j + 1;
                if (line[i] == ',') i++;
                else if (line[i] != '}') throw new FormatException($"line {number}: expected , or }} after a label in '{line}'.");
            }
            i++;
        }
        if (i >= line.Length || line[i] != ' ') throw new FormatException($"line {number}: expected a space before the value in '{line}'.");
        var rest = line[(i + 1)..].Split(' ');
        if (rest.Length is < 1 or > 2) throw new FormatException($"line {number}: expected a value and an optional timestamp in '{line}'.");
        return new PrometheusSample(name, labels, ParseDouble(rest[0]));
    }

    private static (string Name, IReadOnlyDictionary<string, string> Labels) ParseSelector(string selector)
    {
        int brace = selector.IndexOf('{');
        if (brace < 0) return (selector, new Dictionary<string, string>());
        var sample = ParseSample(selector + " 0", 0);
        return (sample.Name, sample.Labels);
    }

    private static double ParseDouble(string s) => s switch
    {
        "+Inf" => double.PositiveInfinity,
        "-Inf" => double.NegativeInfinity,
        "NaN" => double.NaN,
        _ => double.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture),
    };
}
