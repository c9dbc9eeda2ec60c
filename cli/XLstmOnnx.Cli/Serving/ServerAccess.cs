using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace XLstmOnnx.Cli.Serving;

/// <summary>
/// Who may use the server (<see cref="ServerOptions"/>): the address it listens on, the Host names and browser origins it
/// answers, and the API key. Three middlewares, in this order:
/// <code>
/// request -> Host and Origin rules (403) -> CORS (ASP.NET Core's: headers, preflight) -> API key (401) -> endpoints
/// </code>
/// On loopback a browser is the only way a remote page reaches the server: it sends the page's Origin on cross-origin
/// requests, and after DNS rebinding (evil.example resolved to 127.0.0.1) the page's host name as Host. Refusing both
/// closes the class of hole Ollama fixed (CVE-2024-28224).
/// </summary>
internal static class ServerAccess
{
    /// <summary>
    /// Listens on <paramref name="address"/> (from <see cref="ParseHost"/>) and nothing else, or on localhost when it is
    /// null: port 0 picks a free port on 127.0.0.1 only (one port). UseUrls would listen on every interface for a name it
    /// cannot parse. The one listening rule of <c>serve</c> and <c>route</c>.
    /// </summary>
    public static void Listen(Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions k, IPAddress? address, int port)
    {
        if (address is not null) k.Listen(address, port);
        else if (port != 0) k.ListenLocalhost(port);
        else k.Listen(IPAddress.Loopback, 0);
    }

    /// <summary>
    /// <paramref name="host"/> as an address: an IP literal in its usual form (<c>127.0.0.1</c>, <c>::1</c>,
    /// <c>[::1]</c>), or null for <c>localhost</c>. Anything else is an error naming <paramref name="parameter"/>: Kestrel
    /// listens on every interface for a name it cannot parse, and .NET also reads <c>127.1</c> or <c>2130706433</c> as
    /// addresses, which nobody means to type.
    /// </summary>
    public static IPAddress? ParseHost(string? host, string parameter)
    {
        if (string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase)) return null;
        string text = host is ['[', .. var inner, ']'] ? inner : host ?? "";
        if (IPAddress.TryParse(text, out var ip) && !text.Any(char.IsWhiteSpace)
            && (ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? text.Contains(':') : ip.ToString() == text))
        {
            return ip;
        }
        throw XLstmOnnxException.InParameter(parameter,
            $"{parameter} must be an IP address (127.0.0.1 or ::1; 0.0.0.0 or :: for every interface) or localhost; found \"{host}\".");
    }

    /// <summary>
    /// <paramref name="origin"/> as browsers send it: <c>scheme://host[:port]</c> in lower case, without the scheme's
    /// default port; <c>*</c> stays <c>*</c>. Paths, queries and user names are an error naming <paramref name="parameter"/>.
    /// </summary>
    public static string NormalizeOrigin(string origin, string parameter)
    {
        if (origin == "*") return origin;
        if (Uri.TryCreate(origin, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https" && uri.UserInfo.Length == 0
            && uri.PathAndQuery == "/" && uri.Fragment.Length == 0 && !origin.Any(char.IsWhiteSpace))
        {
            return uri.GetLeftPart(UriPartial.Authority).ToLowerInvariant();
        }
        throw XLstmOnnxException.InParameter(parameter,
            $"{parameter}: \"{origin}\" is not an origin; expected scheme://host[:port] (http or https, no path), e.g. https://app.example.com, or * for any.");
    }

    /// <summary>A Host header's host part that names this machine's loopback: localhost, 127.0.0.0/8, [::1].</summary>
    public static bool IsLoopbackName(string host)
    {
        if (string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase)) return true;
        string text = host is ['[', .. var inner, ']'] ? inner : host;
        return IPAddress.TryParse(text, out var ip) && IPAddress.IsLoopback(ip) && (ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? text.Contains(':') : ip.ToString() == text);
    }

    /// <summary>An Origin header of a page served from this machine's loopback (any scheme http/https, any port).</summary>
    public static bool IsLoopbackOrigin(string origin) =>
        Uri.TryCreate(origin, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https" && IsLoopbackName(uri.Host);

    /// <summary>Whether a browser page at <paramref name="origin"/> may use the server.</summary>
    public static bool OriginAllowed(string origin, IReadOnlySet<string> allowed) =>
        IsLoopbackOrigin(origin) || allowed.Contains("*") || (Uri.TryCreate(origin, UriKind.Absolute, out var uri)
            && uri.Scheme is "http" or "https" && allowed.Contains(uri.GetLeftPart(UriPartial.Authority).ToLowerInvariant()));

    /// <summary>The CORS policy of the allowed origins (loopback ones and <see cref="ServerOptions.AllowedOrigins"/>).</summary>
    public static void AddCors(IServiceCollection services, ServerOptions options)
    {
        var allowed = Allowed(options);
        services.AddCors(o => o.AddDefaultPolicy(p => p
            .SetIsOriginAllowed(origin => OriginAllowed(origin, allowed))
            .AllowAnyMethod()
            .AllowAnyHeader() // Authorization and Content-Type above all
            .WithExposedHeaders(OpenAiServer.SeedHeader)
            .SetPreflightMaxAge(TimeSpan.FromMinutes(10))));
    }

    /// <summary>Adds the three middlewares (see the class); <paramref name="loopbackOnly"/>: the Host rule applies.</summary>
    public static void Use(WebApplication app, ServerOptions options, bool loopbackOnly, JsonSerializerOptions json, ILogger log)
    {
        var allowed = Allowed(options);
        app.Use(async (ctx, next) =>
        {
            string host = ctx.Request.Host.Host;
            // no Host at all is HTTP/1.0 from a local tool: browsers always send one
            if (loopbackOnly && host.Length > 0 && !IsLoopbackName(host))
            {
                await Refuse(ctx, new ApiError(403, $"Host '{ctx.Request.Host}' is not a loopback name: this server listens on loopback and answers "
                    + "localhost, 127.0.0.1 and [::1] only (a page that rebound its own name to this machine sends its name).", type: "permission_error", code: "host_not_allowed"), json, log).ConfigureAwait(false);
                return;
            }
            if (ctx.Request.Headers.Origin is [{ } origin] ? !OriginAllowed(origin, allowed) : ctx.Request.Headers.Origin.Count > 1)
            {
                await Refuse(ctx, new ApiError(403, $"Origin '{ctx.Request.Headers.Origin}' is not allowed: a browser page may use this server from loopback "
                    + "origins and those given with --allowed-origins only.", type: "permission_error", code: "origin_not_allowed"), json, log).ConfigureAwait(false);
                return;
            }
            await next(ctx).ConfigureAwait(false);
        });
        app.UseCors();
        if (options.ApiKey is not { } key) return;
        byte[] expected = SHA256.HashData(Encoding.ASCII.GetBytes(key));
        app.Use(async (ctx, next) =>
        {
            if (ctx.Request.Path == "/health" && (HttpMethods.IsGet(ctx.Request.Method) || HttpMethods.IsHead(ctx.Request.Method)))
            {
                await next(ctx).ConfigureAwait(false);
                return;
            }
            string? given = ctx.Request.Headers.Authorization is [{ } auth] && auth.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? auth[7..].Trim() : null;
            // hashes of equal length, compared in constant time: the answer's timing says nothing about the key
            if (given is not null && CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(given)), expected))
            {
                await next(ctx).ConfigureAwait(false);
                return;
            }
            ctx.Response.Headers.WWWAuthenticate = "Bearer";
            await Refuse(ctx, new ApiError(401, given is null
                ? "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                : "Incorrect API key provided.", type: "invalid_request_error", code: "invalid_api_key"), json, log).ConfigureAwait(false);
        });
    }

    private static HashSet<string> Allowed(ServerOptions options) =>
        [.. options.AllowedOrigins.Select(o => NormalizeOrigin(o, ServerOptions.Name(nameof(ServerOptions.AllowedOrigins))))];

    private static async Task Refuse(HttpContext ctx, ApiError error, JsonSerializerOptions json, ILogger log)
    {
        ctx.Response.StatusCode = error.Status;
        OpenAiServer.LogRefusal(log, ctx, error.Message);
        await ctx.Response.WriteAsJsonAsync(error.Body, json).ConfigureAwait(false);
    }
}
