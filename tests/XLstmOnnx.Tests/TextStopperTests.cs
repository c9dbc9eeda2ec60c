using XLstmOnnx.Runtime.Generation;
using XLstmOnnx.Runtime.Tokenization;

namespace XLstmOnnx.Tests;

/// <summary>Streamed text never shows any part of a stop string, whatever the token boundaries.</summary>
[TestFixture]
public class TextStopperTests
{
    private static readonly HfTokenizer Tokenizer = HfTokenizer.Load(Path.Combine(TestPaths.RepoRoot, "models", "kjv-xlstm", "tokenizer.json"));

    private static (string Text, bool Stopped) Stream(string text, params string[] stops)
    {
        var s = new TextStopper(Tokenizer, stops);
        var sb = new System.Text.StringBuilder();
        foreach (int id in Tokenizer.Encode(text))
        {
            string piece = s.Push(id);
            sb.Append(piece);
            if (s.Stopped) break;
        }
        sb.Append(s.Finish());
        return (sb.ToString(), s.Stopped);
    }

    [TestCase("And God said unto Moses\nUser: hello", "\nUser:", "And God said unto Moses", true)]
    [TestCase("And God said unto Moses", "\nUser:", "And God said unto Moses", false)]
    [TestCase("In the beginning God created", "God", "In the beginning ", true)]
    [TestCase("God said unto Moses", "God", "", true)] // the stop string at the very start
    [TestCase("no stop here at all", "", "no stop here at all", false)]
    public void CutsBeforeTheStopString(string text, string stop, string expected, bool stopped)
    {
        var (got, hit) = stop.Length == 0 ? Stream(text) : Stream(text, stop);
        Assert.That(got, Is.EqualTo(expected));
        Assert.That(hit, Is.EqualTo(stopped));
    }

    /// <summary>
    /// A sequence that ends inside a character (here after the first byte of "é", a byte token of its own) ends with
    /// the replacement character, as transformers' decode does: Finish flushes the UTF-8 decoder. Without the flush
    /// the last, incomplete character is dropped silently (the survivor of the mutation run, tools/mutation/README.md).
    /// </summary>
    [Test]
    public void ASequenceEndingInsideACharacterEndsWithTheReplacementCharacter()
    {
        var ids = Tokenizer.Encode("é");
        Assume.That(ids, Has.Length.EqualTo(2), "this tokenizer spells é as two byte tokens");
        var s = new TextStopper(Tokenizer, []);
        string text = s.Push(ids[0]);
        Assert.That(text, Is.Empty, "half a character is held by the decoder");
        Assert.That(s.Finish(), Is.EqualTo("\uFFFD"));
        var whole = new TextStopper(Tokenizer, []);
        Assert.That(whole.Push(ids[0]) + whole.Push(ids[1]) + whole.Finish(), Is.EqualTo("é"), "both bytes give the character");
    }

    [Test]
    public void EndOfTextHasNoText() =>
        Assert.That(Stream("Amen.<|endoftext|>").Text, Is.EqualTo("Amen."));

    [Test]
    public void HeldBackTextNeverContainsAPrefixOfTheStopAfterItIsReleased()
    {
        var s = new TextStopper(Tokenizer, ["\nUser:"]);
        var released = new System.Text.StringBuilder();
        foreach (int id in Tokenizer.Encode("And he said\nUs\nUser: x"))
        {
            released.Append(s.Push(id));
            Assert.That(released.ToString(), Does.Not.Contain("\nUser"), "no part of the stop string is ever released");
            if (s.Stopped) break;
        }
        Assert.That(released.ToString() + s.Finish(), Is.EqualTo("And he said\nUs"));
    }

    /// <summary>
    /// Exactly the longest stop string's length less one is held back, no more: everything before it is shown as soon as
    /// its token is read (a stop string that starts earlier would already be complete).
    /// </summary>
    [Test]
    public void HoldsBackOneLessThanTheLongestStopString()
    {
        var s = new TextStopper(Tokenizer, ["ab", "qwxyz"]); // hold 4
        var stream = Tokenizer.CreateStream(skipSpecialTokens: true);
        var text = new System.Text.StringBuilder();
        var released = new System.Text.StringBuilder();
        foreach (int id in Tokenizer.Encode("And God said, Let there be light: and there was light."))
        {
            text.Append(stream.Next(id));
            released.Append(s.Push(id));
            string all = text.ToString();
            Assert.That(released.ToString(), Is.EqualTo(all[..Math.Max(0, all.Length - 4)]), $"after \"{all}\"");
        }
    }
}
