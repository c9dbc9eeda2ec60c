using System.Net;
using XLstmOnnx.Cli.Serving;

namespace XLstmOnnx.Cli.Routing;

/// <summary>Settings of <c>xlstm-onnx route</c> (docs/routing.md).</summary>
public sealed record RouterOptions
{
    /// <summary>Base URLs of the <c>serve</c> replicas (<c>--replicas</c>).</summary>
    public IReadOnlyList<string> Replicas { get; init; } = [];
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0: a free port.</summary>
    public int Port { get; init; } = 8080;
    public bool AllowRemote { get; init; }
    /// <summary>How often each replica's <c>/health</c> is asked (<c>--health-interval-ms</c>).</summary>
    public TimeSpan HealthInterval { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>How long a <c>/health</c> answer may take before it counts as a failure (<c>--health-timeout-ms</c>).</summary>
    public TimeSpan HealthTimeout { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>Characters a block of a text prompt or chat transcript (<c>--prefix-block-chars</c>).</summary>
    public int PrefixBlockChars { get; init; } = 64;
    /// <summary>Ids a block of a token-id prompt (<c>--prefix-block-tokens</c>).</summary>
    public int PrefixBlockTokens { get; init; } = 16;
    /// <summary>Sessions and prefix hashes the router remembers, each (<c>--table-entries</c>).</summary>
    public int TableEntries { get; init; } = 1 << 20;

    /// <summary>
    /// The replicas' internal token (<c>--internal-token</c>, as <c>serve</c>'s): with it the router hands a moving
    /// conversation's state over (docs/routing.md, "Moving a conversation"); without it the new replica rebuilds it.
    /// </summary>
    public string? InternalToken { get; init; }
    /// <summary>
    /// The shortest prompt (in tokens; estimated for text) whose conversation takes its state along when it moves
    /// (<c>--handoff-min-tokens</c>): below it the new replica reads the transcript again, which is faster. The default
    /// is where the two costs met for xLSTM-7b on two H200s of one host (docs/routing.md, "What moving costs").
    /// </summary>
    public int HandOffMinTokens { get; init; } = 12288;
    /// <summary>How long a state hand-off may take before the turn goes on without it (<c>--handoff-timeout-ms</c>).</summary>
    public TimeSpan HandOffTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>The replicas' base addresses and the address to listen on (null: localhost); errors name the option and the value.</summary>
    public (Uri[] Replicas, IPAddress? Address) Validate()
    {
        if (Replicas.Count == 0) throw new XLstmOnnxException("option --replicas: give at least one replica's base URL, e.g. http://127.0.0.1:8001,http://127.0.0.1:8002.");
        var uris = new Uri[Replicas.Count];
        for (int i = 0; i < uris.Length; i++)
        {
            if (!Uri.TryCreate(Replicas[i], UriKind.Absolute, out var u) || (u.Scheme != Uri.UriSchemeHttp && u.Scheme != Uri.UriSchemeHttps))
                throw new XLstmOnnxException($"option --replicas: '{Replicas[i]}' is not an http:// or https:// URL (replica {i + 1} of {Replicas.Count}).");
            uris[i] = new Uri(u.GetLeftPart(UriPartial.Authority) + u.AbsolutePath.TrimEnd('/') + "/");
        }
        var dup = uris.GroupBy(u => u.ToString()).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new XLstmOnnxException($"option --replicas: {dup.Key} is given {dup.Count()} times; each replica once.");
        if (Port is < 0 or > 65535) throw new XLstmOnnxException($"option --port must be 0 (any free port) to 65535; found {Port}.");
        if (HealthInterval < TimeSpan.FromMilliseconds(50)) throw new XLstmOnnxException($"option --health-interval-ms must be at least 50; found {HealthInterval.TotalMilliseconds:0}.");
        if (HealthTimeout < TimeSpan.FromMilliseconds(50)) throw new XLstmOnnxException($"option --health-timeout-ms must be at least 50; found {HealthTimeout.TotalMilliseconds:0}.");
        if (HandOffMinTokens < 0) throw new XLstmOnnxException($"option --handoff-min-tokens must be 0 (always hand over) or more; found {HandOffMinTokens}.");
        if (HandOffTimeout < TimeSpan.FromMilliseconds(50)) throw new XLstmOnnxException($"option --handoff-timeout-ms must be at least 50; found {HandOffTimeout.TotalMilliseconds:0}.");
        if (InternalToken is { } token && (token.Length == 0 || token.Any(c => c is < '!' or > '~')))
            throw new XLstmOnnxException($"option --internal-token must be printable ASCII without spaces (an HTTP header carries it); found {(token.Length == 0 ? "an empty token" : $"a token of {token.Length} characters with a space, control or non-ASCII character")}.");
        if (PrefixBlockChars < 1) throw new XLstmOnnxException($"option --prefix-block-chars must be at least 1; found {PrefixBlockChars}.");
        if (PrefixBlockTokens < 1) throw new XLstmOnnxException($"option --prefix-block-tokens must be at least 1; found {PrefixBlockTokens}.");
        if (TableEntries < 1) throw new XLstmOnnxException($"option --table-entries must be at least 1; found {TableEntries}.");
        var address = ServerAccess.ParseHost(Host, "--host");
        if (address is not null && !IPAddress.IsLoopback(address) && !AllowRemote)
            throw new XLstmOnnxException($"option --host {Host} listens beyond loopback; add --allow-remote to mean it.");
        return (uris, address);
    }
}
