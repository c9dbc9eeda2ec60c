using System.Text;

namespace XLstmOnnx.Runtime.Tokenization;

/// <summary>
/// Streaming detokenization: feed token ids one by one, get text only when its UTF-8 bytes are complete, so that a
/// character split over several tokens (emoji, CJK in byte-level BPE) is never emitted broken.
/// </summary>
public sealed class TokenStream
{
    private readonly HfTokenizer _tokenizer;
    private readonly bool _skipSpecial;
    private readonly Decoder _utf8 = new UTF8Encoding(false, throwOnInvalidBytes: false).GetDecoder();
    private readonly List<byte> _bytes = new(16);
    private readonly char[] _chars = new char[64];

    internal TokenStream(HfTokenizer tokenizer, bool skipSpecial)
    {
        _tokenizer = tokenizer;
        _skipSpecial = skipSpecial;
    }

    /// <summary>The text completed by <paramref name="id"/> (possibly empty).</summary>
    public string Next(int id)
    {
        _bytes.Clear();
        _tokenizer.AppendBytes(id, _bytes, _skipSpecial);
        if (_bytes.Count == 0) return "";
        var sb = new StringBuilder();
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_bytes);
        while (span.Length > 0)
        {
            _utf8.Convert(span, _chars, flush: false, out int used, out int written, out _);
            sb.Append(_chars, 0, written);
            span = span[used..];
        }
        return sb.ToString();
    }

    /// <summary>Whatever is left (an incomplete character becomes U+FFFD, as a full decode would).</summary>
    public string Flush()
    {
        int n = _utf8.GetChars([], 0, 0, _chars, 0, flush: true);
        return new string(_chars, 0, n);
    }
}
