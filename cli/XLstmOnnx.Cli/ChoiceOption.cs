using System.CommandLine;

namespace XLstmOnnx.Cli;

/// <summary>
/// A value chosen by name. Help prints an option's default through ToString, so a default prints as it is typed
/// (<c>[default: onnx]</c>, not the enum's <c>Onnx</c>); the value converts to <typeparamref name="T"/>.
/// </summary>
internal readonly record struct Choice<T>(string Name, T Value)
{
    public override string ToString() => Name;

    public static implicit operator T(Choice<T> choice) => choice.Value;
}

/// <summary>
/// Text whose default prints in help quoted and escaped (<c>[default: "\nUser: "]</c>), never as a raw newline or
/// invisible blanks; it converts to its string.
/// </summary>
internal readonly record struct QuotedText(string Value)
{
    public override string ToString() => ChoiceOption.Quote(Value);

    public static implicit operator string(QuotedText text) => text.Value;
}

/// <summary>
/// Options whose value is one of a few names: help shows the names as they are typed, in lower case
/// (<c>--mlstm-kernels &lt;onnx|custom&gt;</c>, <c>[default: onnx]</c>), any case is accepted, and anything else is
/// refused with the option, the names and what was given.
/// </summary>
internal static class ChoiceOption
{
    /// <summary>An option over the values of <typeparamref name="TEnum"/>, named by their lower-case names.</summary>
    public static Option<Choice<TEnum>> ForEnum<TEnum>(string name, string description, TEnum defaultValue) where TEnum : struct, Enum =>
        Create(name, description, Enum.GetValues<TEnum>().Select(v => (v.ToString().ToLowerInvariant(), v)).ToArray(), defaultValue);

    /// <summary>An option over <paramref name="names"/>; its value is the matching name as written here.</summary>
    public static Option<Choice<string>> ForNames(string name, string description, string defaultValue, params string[] names) =>
        Create(name, description, names.Select(n => (n, n)).ToArray(), defaultValue);

    /// <summary>An option whose value is one of <paramref name="choices"/>, given by name in any case.</summary>
    public static Option<Choice<T>> Create<T>(string name, string description, IReadOnlyList<(string Name, T Value)> choices, T defaultValue)
    {
        var byName = choices.Select(c => new Choice<T>(c.Name, c.Value)).ToArray();
        var fallback = byName.Single(c => EqualityComparer<T>.Default.Equals(c.Value, defaultValue));
        string expected = string.Join(", ", byName.Select(c => c.Name));
        var option = new Option<Choice<T>>(name)
        {
            Description = description,
            HelpName = string.Join('|', byName.Select(c => c.Name)),
            DefaultValueFactory = _ => fallback,
            CustomParser = result =>
            {
                string given = string.Join(' ', result.Tokens.Select(t => t.Value));
                foreach (var choice in byName)
                {
                    if (string.Equals(choice.Name, given, StringComparison.OrdinalIgnoreCase)) return choice;
                }
                result.AddError($"option {name}: expected one of {expected} (any case); found '{given}'.");
                return fallback;
            },
        };
        option.CompletionSources.Add(byName.Select(c => c.Name).ToArray());
        return option;
    }

    /// <summary>A text option whose default help prints quoted and escaped (see <see cref="QuotedText"/>).</summary>
    public static Option<QuotedText> Text(string name, string description, string defaultValue) => new(name)
    {
        Description = description,
        HelpName = "text",
        DefaultValueFactory = _ => new QuotedText(defaultValue),
        CustomParser = result => new QuotedText(string.Join(' ', result.Tokens.Select(t => t.Value))),
    };

    /// <summary>A string as a C# literal writes it: quoted, with \\, ", newline, carriage return and tab escaped.</summary>
    public static string Quote(string s) =>
        "\"" + s.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n").Replace("\r", "\\r").Replace("\t", "\\t") + "\"";
}
