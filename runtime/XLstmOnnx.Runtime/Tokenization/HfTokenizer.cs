using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace XLstmOnnx.Runtime.Tokenization;

/// <summary>
/// An HF <c>tokenizer.json</c> (byte-level BPE: GPT-2, GPT-NeoX, and BPE tokenizers trained with HF tokenizers'
/// ByteLevel pre-tokenizer) loaded into Microsoft.ML.Tokenizers. Encoding is the library's BPE with the declared
/// normalizer and pre-tokenizer; added tokens are matched longest first, as HF's leftmost-longest matcher does.
/// Decoding maps tokens back to bytes ourselves, so that <see cref="TokenStream"/> can hold back incomplete UTF-8.
/// </summary>
public sealed class HfTokenizer
{
    /// <summary>The pre-tokenization regex of GPT-2's ByteLevel (use_regex: true).</summary>
    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private readonly BpeTokenizer _bpe;
    private readonly string[] _idToToken;
    private readonly bool[] _isSpecial;
    private readonly Dictionary<char, byte> _byteDecoder;
    private readonly Normalizer? _normalizer;
    private readonly int[] _prefixIds;
    private readonly int[] _suffixIds;

    public string Path { get; }
    /// <summary>Number of token ids the tokenizer knows (model vocabulary plus added tokens).</summary>
    public int Count => _idToToken.Length;
    /// <summary>Added tokens that are special (e.g. &lt;|endoftext|&gt;), by content.</summary>
    public IReadOnlyDictionary<string, int> SpecialTokens { get; }

    private HfTokenizer(string path, BpeTokenizer bpe, Normalizer? normalizer, string[] idToToken, bool[] isSpecial,
        Dictionary<string, int> special, int[] prefix, int[] suffix)
    {
        _normalizer = normalizer;
        Path = path;
        _bpe = bpe;
        _idToToken = idToToken;
        _isSpecial = isSpecial;
        SpecialTokens = special;
        _prefixIds = prefix;
        _suffixIds = suffix;
        _byteDecoder = ByteLevel.Unicode.Select((c, b) => (c, (byte)b)).ToDictionary(t => t.c, t => t.Item2);
    }

    /// <summary>Loads <paramref name="path"/>; throws naming the field when the tokenizer is of a kind we do not read.</summary>
    public static HfTokenizer Load(string path)
    {
        if (!File.Exists(path)) throw new XLstmOnnxException($"{path}: tokenizer file not found.");
        try
        {
            return LoadCore(path);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException
            or ArgumentException or IndexOutOfRangeException or OverflowException or IOException or UnauthorizedAccessException)
        {
            // a corrupt or truncated file, a field of the wrong JSON type, an id out of range: one error that names the file
            throw new XLstmOnnxException($"{path}: not a tokenizer.json this loader reads ({e.GetType().Name}: {e.Message}).", e);
        }
    }

    private static HfTokenizer LoadCore(string path)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
        var root = doc.RootElement;
        XLstmOnnxException Unsupported(string field, string found, string expected) =>
            new($"{path}: field '{field}' is {found}; this loader reads {expected}.");

        var model = root.GetProperty("model");
        string type = model.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "";
        if (type != "BPE") throw Unsupported("model.type", $"\"{type}\"", "\"BPE\"");
        var vocab = model.GetProperty("vocab").EnumerateObject().Select(p => KeyValuePair.Create(p.Name, p.Value.GetInt32())).ToList();
        // tokenizers < 0.20 wrote merges as "a b"; newer versions as ["a", "b"]
        var merges = model.GetProperty("merges").EnumerateArray()
            .Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : $"{e[0].GetString()} {e[1].GetString()}").ToList();

        var added = new List<(string Content, int Id, bool Special)>();
        if (root.TryGetProperty("added_tokens", out var at) && at.ValueKind == JsonValueKind.Array)
        {
            foreach (var a in at.EnumerateArray())
            {
                added.Add((a.GetProperty("content").GetString()!, a.GetProperty("id").GetInt32(), a.TryGetProperty("special", out var sp) && sp.GetBoolean()));
            }
        }
        // HF matches added tokens leftmost-longest; .NET regex alternation is leftmost-first in insertion order: longest first.
        var addedMap = new Dictionary<string, int>();
        foreach (var a in added.OrderByDescending(a => a.Content.Length).ThenBy(a => a.Id)) addedMap[a.Content] = a.Id;

        Normalizer? normalizer = ReadNormalizer(root, path);
        bool addPrefixSpace = ReadPreTokenizer(root, path);
        if (addPrefixSpace) normalizer = new PrefixSpaceNormalizer(normalizer);
        string decoderType = root.TryGetProperty("decoder", out var dec) && dec.ValueKind == JsonValueKind.Object && dec.TryGetProperty("type", out var dt) ? dt.GetString() ?? "" : "";
        if (decoderType is not ("ByteLevel" or "")) throw Unsupported("decoder.type", $"\"{decoderType}\"", "\"ByteLevel\"");

        var bpe = BpeTokenizer.Create(new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            SpecialTokens = addedMap.Count > 0 ? addedMap : null,
            PreTokenizer = new RegexPreTokenizer(new Regex(Gpt2Pattern, RegexOptions.Compiled), addedMap.Count > 0 ? addedMap : null),
        });

        int count = Math.Max(vocab.Count == 0 ? 0 : vocab.Max(v => v.Value) + 1, added.Count == 0 ? 0 : added.Max(a => a.Id) + 1);
        var idToToken = new string[count];
        var isSpecial = new bool[count];
        foreach (var (k, v) in vocab) idToToken[v] = k;
        foreach (var a in added)
        {
            idToToken[a.Id] = a.Content;
            isSpecial[a.Id] = a.Special;
        }
        var (prefix, suffix) = ReadTemplate(root, path);
        return new HfTokenizer(path, bpe, normalizer, idToToken, isSpecial,
            added.Where(a => a.Special).ToDictionary(a => a.Content, a => a.Id), prefix, suffix);
    }

    private static Normalizer? ReadNormalizer(JsonElement root, string path)
    {
        if (!root.TryGetProperty("normalizer", out var n) || n.ValueKind == JsonValueKind.Null) return null;
        string type = n.GetProperty("type").GetString() ?? "";
        return type switch
        {
            "NFC" => new UnicodeNormalizer(NormalizationForm.FormC),
            "NFD" => new UnicodeNormalizer(NormalizationForm.FormD),
            "NFKC" => new UnicodeNormalizer(NormalizationForm.FormKC),
            "NFKD" => new UnicodeNormalizer(NormalizationForm.FormKD),
            "Sequence" when n.GetProperty("normalizers").GetArrayLength() == 0 => null,
            _ => throw new XLstmOnnxException($"{path}: field 'normalizer.type' is \"{type}\"; this loader reads null, NFC, NFD, NFKC or NFKD."),
        };
    }

    /// <summary>Accepts ByteLevel with GPT-2's regex; returns its add_prefix_space.</summary>
    private static bool ReadPreTokenizer(JsonElement root, string path)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var p) || p.ValueKind != JsonValueKind.Object)
        {
            throw new XLstmOnnxException($"{path}: field 'pre_tokenizer' is missing; byte-level BPE needs a ByteLevel pre-tokenizer (without one, spaces would be dropped).");
        }
        string type = p.GetProperty("type").GetString() ?? "";
        if (type != "ByteLevel") throw new XLstmOnnxException($"{path}: field 'pre_tokenizer.type' is \"{type}\"; this loader reads \"ByteLevel\".");
        if (p.TryGetProperty("use_regex", out var r) && !r.GetBoolean())
        {
            throw new XLstmOnnxException($"{path}: field 'pre_tokenizer.use_regex' is false; this loader reads ByteLevel with GPT-2's regex (use_regex true).");
        }
        return p.TryGetProperty("add_prefix_space", out var a) && a.GetBoolean();
    }

    /// <summary>The special tokens a TemplateProcessing post-processor puts around a single sequence (none for ByteLevel).</summary>
    private static (int[] Prefix, int[] Suffix) ReadTemplate(JsonElement root, string path)
    {
        if (!root.TryGetProperty("post_processor", out var pp) || pp.ValueKind != JsonValueKind.Object) return ([], []);
        string type = pp.GetProperty("type").GetString() ?? "";
        if (type is "ByteLevel") return ([], []);
        if (type != "TemplateProcessing") throw new XLstmOnnxException($"{path}: field 'post_processor.type' is \"{type}\"; this loader reads ByteLevel or TemplateProcessing.");
        var prefix = new List<int>();
        var suffix = new List<int>();
        bool seenSequence = false;
        var specials = pp.GetProperty("special_tokens");
        foreach (var piece in pp.GetProperty("single").EnumerateArray())
        {
            if (piece.TryGetProperty("Sequence", out _)) { seenSequence = true; continue; }
            string id = piece.GetProperty("SpecialToken").GetProperty("id").GetString()!;
            foreach (var tokenId in specials.GetProperty(id).GetProperty("ids").EnumerateArray()) (seenSequence ? suffix : prefix).Add(tokenId.GetInt32());
        }
        return ([.. prefix], [.. suffix]);
    }

    /// <summary>Token ids of <paramref name="text"/>; with <paramref name="addSpecialTokens"/>, the post-processor's template is applied (as HF's default).</summary>
    public int[] Encode(string text, bool addSpecialTokens = false)
    {
        // the normalizer runs here, on the whole text, as HF's does (BpeOptions.Normalizer was not applied by EncodeToIds)
        string normalized = _normalizer?.Normalize(text) ?? text;
        var ids = _bpe.EncodeToIds(normalized, considerPreTokenization: true, considerNormalization: false);
        if (!addSpecialTokens || (_prefixIds.Length == 0 && _suffixIds.Length == 0)) return [.. ids];
        return [.. _prefixIds, .. ids, .. _suffixIds];
    }

    /// <summary>The text of <paramref name="ids"/>; special tokens are kept unless <paramref name="skipSpecialTokens"/>.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        var bytes = new List<byte>();
        foreach (int id in ids) AppendBytes(id, bytes, skipSpecialTokens);
        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    /// <summary>The bytes token <paramref name="id"/> stands for (a piece of UTF-8 text, not always a whole character).</summary>
    public byte[] TokenBytes(int id)
    {
        var bytes = new List<byte>();
        AppendBytes(id, bytes, skipSpecialTokens: false);
        return [.. bytes];
    }

    /// <summary>True for special added tokens (e.g. end of text).</summary>
    public bool IsSpecial(int id) => id >= 0 && id < _isSpecial.Length && _isSpecial[id];

    /// <summary>The bytes a token stands for: byte-level characters map back to bytes, other characters to their UTF-8.</summary>
    internal void AppendBytes(int id, List<byte> dest, bool skipSpecialTokens)
    {
        if (id < 0 || id >= _idToToken.Length || _idToToken[id] is null)
        {
            throw new XLstmOnnxException($"{Path}: token id {id} is not in the tokenizer (0..{_idToToken.Length - 1}).");
        }
        if (skipSpecialTokens && _isSpecial[id]) return;
        string token = _idToToken[id];
        Span<byte> utf8 = stackalloc byte[4];
        // HF's ByteLevel decoder, applied to every token (added ones too): a character of the byte table is that byte,
        // any other character is its own UTF-8.
        foreach (var rune in token.EnumerateRunes())
        {
            if (rune.IsBmp && _byteDecoder.TryGetValue((char)rune.Value, out byte b))
            {
                dest.Add(b);
                continue;
            }
            int n = rune.EncodeToUtf8(utf8);
            for (int i = 0; i < n; i++) dest.Add(utf8[i]);
        }
    }

    /// <summary>A streaming detokenizer over this tokenizer.</summary>
    public TokenStream CreateStream(bool skipSpecialTokens = false) => new(this, skipSpecialTokens);

    private sealed class UnicodeNormalizer(NormalizationForm form) : Normalizer
    {
        public override string Normalize(string original) => original.Normalize(form);
        public override string Normalize(ReadOnlySpan<char> original) => original.ToString().Normalize(form);
    }

    /// <summary>ByteLevel's add_prefix_space: a space before text that does not start with one.</summary>
    private sealed class PrefixSpaceNormalizer(Normalizer? inner) : Normalizer
    {
        public override string Normalize(string original)
        {
            string s = inner?.Normalize(original) ?? original;
            return s.Length > 0 && s[0] != ' ' ? " " + s : s;
        }
        public override string Normalize(ReadOnlySpan<char> original) => Normalize(original.ToString());
    }
}

/// <summary>GPT-2's byte ↔ printable-character table (bytes_to_unicode).</summary>
internal static class ByteLevel
{
    /// <summary>Unicode[b] is the character byte b is written as.</summary>
    public static readonly char[] Unicode = Build();

    private static char[] Build()
    {
        var table = new char[256];
        var direct = new HashSet<int>();
        for (int b = '!'; b <= '~'; b++) direct.Add(b);
        for (int b = 0xA1; b <= 0xAC; b++) direct.Add(b);
        for (int b = 0xAE; b <= 0xFF; b++) direct.Add(b);
        int n = 0;
        for (int b = 0; b < 256; b++) table[b] = direct.Contains(b) ? (char)b : (char)(256 + n++);
        return table;
    }
}
