namespace XLstmOnnx.GraphBuilder.Config;

/// <summary>Python float semantics that HF's size formulas depend on, reproduced bit for bit.</summary>
internal static class PythonMath
{
    /// <summary>Python's <c>a // b</c> for floats (CPython <c>float_floor_div</c>): fmod-based, not floor(a / b).</summary>
    public static double FloorDiv(double a, double b)
    {
        if (b == 0) throw new DivideByZeroException("float floor division by zero");
        double mod = a % b; // C# % on doubles is C's fmod, as in CPython
        double div = (a - mod) / b;
        if (mod != 0 && (b < 0) != (mod < 0))
        {
            div -= 1.0;
        }
        if (div == 0) return 0.0 * (a / b); // keeps the sign of zero like CPython
        double floordiv = Math.Floor(div);
        if (div - floordiv > 0.5) floordiv += 1.0;
        return floordiv;
    }

    /// <summary>
    /// HF's <c>round_up_to_next_multiple_of(x, m) = int(((x + m - 1) // m) * m)</c>. For a non-integer x that lies
    /// less than 1 above a multiple of m this rounds down, not up; we keep that quirk because the checkpoint's
    /// shapes were made with it.
    /// </summary>
    public static long RoundUpToNextMultipleOf(double x, double multipleOf) =>
        (long)(FloorDiv(x + multipleOf - 1, multipleOf) * multipleOf);
}
