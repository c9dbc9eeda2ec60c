using System.Text;
using XLstmOnnx.Runtime.Tokenization;

namespace XLstmOnnx.Runtime.Generation;

/// <summary>
/// The text of one sequence as its tokens arrive, with stop strings: releases only text that cannot be the start of a
/// stop string, and cuts the text where one appears, so that a stream never shows any part of a stop string. Special
/// tokens (end of text) have no text. One instance per sequence; used by the generator and the serving engine alike.
/// </summary>
public sealed class TextStopper
{
    private readonly TokenStream _stream;
    private readonly IReadOnlyList<string> _stops;
    private readonly int _hold;
    private readonly StringBuilder _text = new();
    private int _released;

    public TextStopper(HfTokenizer tokenizer, IReadOnlyList<string> stops)
    {
        _stream = tokenizer.CreateStream(skipSpecialTokens: true);
        _stops = stops;
        _hold = stops.Count == 0 ? 0 : stops.Max(s => s.Length) - 1;
    }

    /// <summary>True once a stop string has appeared (the text ends before it).</summary>
    public bool Stopped { get; private set; }

    /// <summary>Adds a token; returns the text now safe to show (possibly empty).</summary>
    public string Push(int token)
    {
        if (Stopped) return "";
        _text.Append(_stream.Next(token));
        if (_stops.Count > 0)
        {
            // a stop string cannot start inside released text (it would have been complete, and found, a token earlier)
            int from = Math.Max(0, _released - _hold);
            string tail = _text.ToString(from, _text.Length - from);
            foreach (var stop in _stops)
            {
                int i = tail.IndexOf(stop, StringComparison.Ordinal);
                if (i >= 0)
                {
                    Stopped = true;
                    return Release(Math.Max(_released, from + i));
                }
            }
        }
        return Release(Math.Max(_released, _text.Length - _hold));
    }

    /// <summary>The end of the sequence: whatever was held back (nothing after a stop string).</summary>
    public string Finish()
    {
        if (Stopped) return "";
        _text.Append(_stream.Flush());
        return Release(_text.Length);
    }

    private string Release(int upTo)
    {
        string piece = _text.ToString(_released, upTo - _released);
        _released = upTo;
        return piece;
    }
}
