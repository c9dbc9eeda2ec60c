using Microsoft.AspNetCore.Builder;
using XLstmOnnx.Cli.Serving;
using XLstmOnnx.GraphBuilder.Export;
using XLstmOnnx.Runtime;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// The OpenAI-compatible server on a free loopback port over the shipped model (exported into a temporary folder), for
/// the fixtures that test the HTTP API. Owns the folder, session, engine, server and client; Dispose stops them all.
/// </summary>
internal sealed class ShippedModelServer : IAsyncDisposable
{
    private readonly TempDir _tmp;
    private WebApplication? _app;
    private ServerOptions _options = new();

    private ShippedModelServer(TempDir tmp, XLstmSession session, ServingEngine engine)
    {
        _tmp = tmp;
        Session = session;
        Engine = engine;
    }

    /// <summary>The exported model's folder.</summary>
    public string Model => _tmp.Sub("kjv");
    public XLstmSession Session { get; }
    public ServingEngine Engine { get; }
    public string Url { get; private set; } = "";
    public HttpClient Http { get; private set; } = null!;

    /// <summary>Exports models/kjv-xlstm, loads it and serves it with <paramref name="serving"/> and <paramref name="server"/> (its Port is set to 0).</summary>
    public static async Task<ShippedModelServer> StartAsync(ServingOptions serving, ServerOptions server)
    {
        var tmp = TestPaths.Temp();
        OnnxExporter.Export(Path.Combine(TestPaths.RepoRoot, "models", "kjv-xlstm"), tmp.Sub("kjv"), new ExportOptions());
        var session = XLstmSession.Load(tmp.Sub("kjv"));
        var s = new ShippedModelServer(tmp, session, new ServingEngine(session, serving));
        (s._app, s.Url) = await OpenAiServer.StartAsync(s.Engine, server with { Port = 0 });
        s._options = server with { Port = new Uri(s.Url).Port };
        s.Http = new HttpClient { BaseAddress = new Uri(s.Url) };
        return s;
    }

    /// <summary>Stops answering HTTP (the port closes, as when the process dies); the engine and its caches stay.</summary>
    public async Task StopHttpAsync()
    {
        if (_app is null) return;
        await _app.DisposeAsync();
        _app = null;
    }

    /// <summary>Answers HTTP again on the same port, with the same engine.</summary>
    public async Task StartHttpAsync()
    {
        if (_app is not null) return;
        (_app, _) = await OpenAiServer.StartAsync(Engine, _options);
    }

    public async ValueTask DisposeAsync()
    {
        Http?.Dispose();
        if (_app is not null) await _app.DisposeAsync();
        Engine.Dispose();
        Session.Dispose();
        _tmp.Dispose();
    }
}
