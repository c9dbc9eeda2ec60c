namespace XLstmOnnx;

/// <summary>
/// The one exception type XLstmOnnx throws for bad input and model/runtime mismatches. Its message names the
/// file, tensor, field or option at fault, the expected value and the actual one.
/// </summary>
public sealed class XLstmOnnxException : Exception
{
    public XLstmOnnxException(string message) : base(message) { }

    public XLstmOnnxException(string message, Exception inner) : base(message, inner) { }
}
