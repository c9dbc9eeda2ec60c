using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using XLstmOnnx.Cli.Serving;

namespace XLstmOnnx.Cli.Routing;

/// <summary>
/// Moves a conversation's state between replicas before its next turn is forwarded (docs/routing.md, "Moving a
/// conversation"): <c>POST /internal/prefix/export</c> on the replica it leaves, with the turn's own request body (the
/// replica reads the prompt from it as its completions and chat APIs do), then <c>POST /internal/prefix/import</c> on the
/// replica it goes to, the file streamed through without being held here. Both carry the internal token. Owns its
/// HTTP client.
/// </summary>
internal sealed class StateHandOff(string token, TimeSpan timeout) : IDisposable
{
    /// <summary>The response header that says what the hand-off before this answer did (<see cref="Result.HeaderValue"/>).</summary>
    public const string Header = "X-Xlstm-Handoff";

    private readonly HttpClient _http = new(new SocketsHttpHandler { UseProxy = false }) { Timeout = timeout };

    /// <summary>
    /// What a hand-off did: <c>moved</c> (the state of <see cref="Tokens"/> prompt tokens, <see cref="Bytes"/> long),
    /// <c>not_cached</c> (the old replica held no prefix of the prompt: the new one reads it all) or <c>failed</c> (the
    /// new replica reads the prompt all the same; <see cref="Error"/> says why).
    /// </summary>
    public sealed record Result(string Outcome, int Tokens, long Bytes, TimeSpan Took, string? Error = null, string? Timing = null)
    {
        public string HeaderValue => Outcome == "moved"
            ? string.Create(CultureInfo.InvariantCulture, $"moved; tokens={Tokens}; bytes={Bytes}; ms={Took.TotalMilliseconds:0.0}")
            : Outcome;
    }

    public async Task<Result> MoveAsync(string from, string to, ReadOnlyMemory<byte> body, CancellationToken cancel)
    {
        long started = Stopwatch.GetTimestamp();
        Result Done(string outcome, int tokens = 0, long bytes = 0, string? error = null, string? timing = null) => new(outcome, tokens, bytes, Stopwatch.GetElapsedTime(started), error, timing);
        try
        {
            using var export = Request(from, "internal/prefix/export", new ReadOnlyMemoryContent(body));
            export.Content!.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            using var exported = await _http.SendAsync(export, HttpCompletionOption.ResponseHeadersRead, cancel).ConfigureAwait(false);
            if (exported.StatusCode == HttpStatusCode.NotFound) return Done("not_cached");
            if (!exported.IsSuccessStatusCode)
                return Done("failed", error: $"export from {from}: {(int)exported.StatusCode} {await exported.Content.ReadAsStringAsync(cancel).ConfigureAwait(false)}");
            int tokens = exported.Headers.TryGetValues(OpenAiServer.PrefixTokensHeader, out var t) && int.TryParse(t.FirstOrDefault(), CultureInfo.InvariantCulture, out int n) ? n : 0;
            long bytes = exported.Content.Headers.ContentLength ?? 0;
            double exportMs = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
            // a large buffer: StreamContent's default (4 KiB) costs a socket write per 4 KiB of a 134 MB state
            var file = new StreamContent(await exported.Content.ReadAsStreamAsync(cancel).ConfigureAwait(false), 1 << 20);
            if (exported.Content.Headers.ContentLength is { } length) file.Headers.ContentLength = length;
            file.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
            using var import = Request(to, "internal/prefix/import", file);
            using var imported = await _http.SendAsync(import, cancel).ConfigureAwait(false);
            if (!imported.IsSuccessStatusCode)
                return Done("failed", error: $"import into {to}: {(int)imported.StatusCode} {await imported.Content.ReadAsStringAsync(cancel).ConfigureAwait(false)}");
            string Timing(HttpResponseMessage r) => r.Headers.TryGetValues(OpenAiServer.HandOffTimingHeader, out var v) ? v.First() : "?";
            return Done("moved", tokens, bytes, timing: string.Create(CultureInfo.InvariantCulture,
                $"export answered after {exportMs:0.0} ms ({Timing(exported)}); transfer and import {Stopwatch.GetElapsedTime(started).TotalMilliseconds - exportMs:0.0} ms (import: {Timing(imported)})"));
        }
        catch (Exception e) when (e is HttpRequestException or IOException || (e is TaskCanceledException && !cancel.IsCancellationRequested))
        {
            return Done("failed", error: e is TaskCanceledException ? $"no answer within {_http.Timeout.TotalMilliseconds:0} ms" : e.Message);
        }
    }

    private HttpRequestMessage Request(string replica, string path, HttpContent content)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, new Uri(new Uri(replica), path)) { Content = content };
        request.Headers.Add(OpenAiServer.InternalTokenHeader, token);
        return request;
    }

    public void Dispose() => _http.Dispose();
}
