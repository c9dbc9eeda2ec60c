using XLstmOnnx.Runtime;

namespace XLstmOnnx.Tests;

/// <summary><see cref="ReferenceVerifier.Compare"/>'s figures on hand-made values, where each one can be worked out on paper.</summary>
[TestFixture]
public class ReferenceVerifierTests
{
    [Test]
    public void CompareGivesTheRelativeL2ErrorBesideTheWorstErrors()
    {
        // differences 0, 0, 1, −2: ‖d‖₂ = √5; ‖expected‖₂ = √(1 + 4 + 4 + 36) = √45; relative L2 = √(5/45) = 1/3
        float[] expected = [1, 2, 2, 6], actual = [1, 2, 3, 4];
        var r = ReferenceVerifier.Compare("hand", "logits", actual, expected, atol: 0.5, rtol: 0);
        Assert.That(r.RelativeL2, Is.EqualTo(1.0 / 3).Within(1e-15));
        Assert.That(r.MaxAbsError, Is.EqualTo(2));
        Assert.That(r.MaxRelError, Is.EqualTo(0.5), "1/2 at the third value, 2/6 at the fourth");
        Assert.That(r.Violations, Is.EqualTo(2));

        // it is relative: scaling both sides leaves it, and swapping them measures against the other norm
        float[] e10 = [10, 20, 20, 60], a10 = [10, 20, 30, 40];
        Assert.That(ReferenceVerifier.Compare("hand", "logits", a10, e10, 0, 0).RelativeL2, Is.EqualTo(1.0 / 3).Within(1e-15));
        Assert.That(ReferenceVerifier.Compare("hand", "logits", expected, actual, 0, 0).RelativeL2, Is.EqualTo(Math.Sqrt(5.0 / 30)).Within(1e-15),
            "‖actual‖₂ = √(1 + 4 + 9 + 16) = √30 when actual is the reference");
    }

    [Test]
    public void RelativeL2EdgeCases()
    {
        Assert.That(ReferenceVerifier.Compare("c", "x", [0f, 0f], [0f, 0f], 0, 0).RelativeL2, Is.Zero, "equal zeros");
        Assert.That(ReferenceVerifier.Compare("c", "x", [0f, 1f], [0f, 0f], 0, 0).RelativeL2, Is.EqualTo(double.PositiveInfinity), "anything against zeros");
        Assert.That(ReferenceVerifier.Compare("c", "x", [float.NaN, 1f], [1f, 1f], 0, 0).RelativeL2, Is.NaN, "a NaN is not hidden");
        Assert.That(ReferenceVerifier.Compare("c", "x", [3f, 4f], [3f, 4f], 0, 0).RelativeL2, Is.Zero);
        // float values whose squares overflow float32 still give the right ratio (the sums are double)
        Assert.That(ReferenceVerifier.Compare("c", "x", [2e30f], [1e30f], 0, 0).RelativeL2, Is.EqualTo(1).Within(1e-6));
        Assert.That(new CheckResult("c", "greedy_ids", 16, 0, 0, 0).RelativeL2, Is.NaN, "a check of ids has none");
    }
}
