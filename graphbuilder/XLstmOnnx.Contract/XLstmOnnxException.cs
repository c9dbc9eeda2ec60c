using System.Globalization;

namespace XLstmOnnx;

/// <summary>
/// The one exception type XLstmOnnx throws for bad input and model/runtime mismatches. Its message names the
/// file, tensor, field or API parameter at fault, the expected value and the actual one.
/// </summary>
public sealed class XLstmOnnxException : Exception
{
    public XLstmOnnxException(string message) : base(message) { }

    public XLstmOnnxException(string message, Exception inner) : base(message, inner) { }

    private XLstmOnnxException(string parameter, string message, Exception? inner) : base(message, inner) => Parameter = parameter;

    /// <summary>
    /// The API parameter whose value is at fault, as the message names it: <c>Type.Property</c> for options
    /// (<c>GenerationOptions.Temperature</c>), <c>Type.Method(parameter)</c> or <c>Type(parameter)</c> for arguments of
    /// methods and constructors; null when the fault is not in a parameter (a file, a model). Applications map it to
    /// their own names (the CLI to its flags).
    /// </summary>
    public string? Parameter { get; }

    /// <summary>An error in the value of <paramref name="parameter"/>; <paramref name="message"/> names it as given.</summary>
    public static XLstmOnnxException InParameter(string parameter, string message, Exception? inner = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(parameter);
        return new XLstmOnnxException(parameter, message, inner);
    }

    /// <summary>An error in the value of <paramref name="parameter"/>: "{parameter} must be {expected}; found {actual}."</summary>
    public static XLstmOnnxException MustBe(string parameter, string expected, object? actual) =>
        InParameter(parameter, $"{parameter} must be {expected}; found {Format(actual)}.");

    private static string Format(object? value) => value switch
    {
        null => "null",
        string s => $"\"{s}\"",
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };
}
