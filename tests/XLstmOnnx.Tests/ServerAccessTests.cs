using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging.Abstractions;
using XLstmOnnx.Cli.Serving;
using XLstmOnnx.Contract;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Tests;

/// <summary>
/// Who may use the server: the address it listens on (an IP or localhost, loopback unless AllowRemote), the Host and
/// Origin rules against DNS rebinding and cross-origin pages, CORS for allowed origins, the API key; and the errors of
/// serve and loopback when the address, port or server is wrong. Servers of their own over the shipped model's engine.
/// </summary>
[TestFixture]
[NonParallelizable] // the CLI cases redirect Console
public class ServerAccessTests
{
    private ShippedModelServer _server = null!;
    private const string Key = "sk-test-0123456789";

    [OneTimeSetUp]
    public async Task Start() => _server = await ShippedModelServer.StartAsync(new ServingOptions { MaxBatch = 2, QueueCapacity = 8 },
        new ServerOptions { ModelId = "kjv", Logs = NullLoggerProvider.Instance });

    [OneTimeTearDown]
    public async Task Stop() => await _server.DisposeAsync();

    /// <summary>Another server over the same engine with <paramref name="options"/> (Port 0); dispose it.</summary>
    private async Task<Served> Serve(ServerOptions options)
    {
        var (app, url) = await OpenAiServer.StartAsync(_server.Engine, options with { Port = 0, ModelId = "kjv", Logs = NullLoggerProvider.Instance });
        return new Served(app, url);
    }

    private sealed class Served(WebApplication app, string url) : IAsyncDisposable
    {
        public readonly Uri Url = new(url);
        public readonly HttpClient Http = new() { BaseAddress = new Uri(url) };

        public async ValueTask DisposeAsync()
        {
            Http.Dispose();
            await app.DisposeAsync();
        }
    }

    private static async Task<(HttpStatusCode Status, string Body, HttpResponseMessage Response)> Send(HttpClient http, HttpMethod method, string path,
        Action<HttpRequestMessage>? headers = null, object? body = null)
    {
        using var req = new HttpRequestMessage(method, path);
        if (body is not null) req.Content = JsonContent.Create(body);
        headers?.Invoke(req);
        var r = await http.SendAsync(req);
        return (r.StatusCode, await r.Content.ReadAsStringAsync(), r);
    }

    /// <summary>The error of an OpenAI-shaped body: {"error": {"message", "type", "param", "code"}}, every key present.</summary>
    private static JsonElement Error(string body)
    {
        var error = JsonDocument.Parse(body).RootElement.GetProperty("error");
        Assert.That(error.EnumerateObject().Select(p => p.Name), Is.EquivalentTo(new[] { "message", "type", "param", "code" }), body);
        return error.Clone();
    }

    private static readonly object Completion = new { model = "kjv", prompt = "And", max_tokens = 2, temperature = 0 };

    [TestCase("locahost")]
    [TestCase("127.0.0.1 ")]
    [TestCase("not-an-ip")]
    [TestCase("127.1")]
    [TestCase("")]
    public void AHostThatIsNotAnAddressIsRefusedNotListenedOnEverywhere(string host)
    {
        var e = Assert.ThrowsAsync<XLstmOnnxException>(() => Serve(new ServerOptions { Host = host }))!;
        Assert.That(e.Parameter, Is.EqualTo("ServerOptions.Host"));
        Assert.That(e.Message, Does.Contain($"found \"{host}\"").And.Contain("IP address").And.Contain("localhost"));
    }

    [TestCase("serve --model m --host locahost", "option --host must be an IP address (127.0.0.1 or ::1; 0.0.0.0 or :: for every interface) or localhost; found \"locahost\".")]
    [TestCase("serve --model m --host not-an-ip", "option --host must be an IP address")]
    [TestCase("serve --model m --host 0.0.0.0", "option --host 0.0.0.0 is beyond loopback: every machine that reaches this one could use the API. Give --allow-remote to mean it (and --api-key to require a key)")]
    [TestCase("serve --model m --port 70000", "option --port must be between 0 and 65535 (0: any free port); found 70000.")]
    [TestCase("serve --model m --port -1", "option --port must be between 0 and 65535")]
    [TestCase("serve --model m --allowed-origins http://a.example/path", "option --allowed-origins: \"http://a.example/path\" is not an origin; expected scheme://host[:port]")]
    [TestCase("loadtest --url http://127.0.0.1:1 --model-name kjv --clients 0", "option --clients must be at least 1; found 0.")]
    [TestCase("loadtest --url not-a-url --model-name kjv", "option --url must be an http URL")]
    public void ServeAndLoadtestOptionsAreCheckedBeforeAnythingRuns(string command, string message)
    {
        var r = CliTests.Run(command.Split(' '));
        Assert.That(r.Code, Is.EqualTo(2), r.Err);
        Assert.That(r.Err, Does.Contain("error: " + message));
        Assert.That(r.Err, Does.Not.Contain("   at "), "no stack trace");
    }

    [Test]
    public void AnEmptyApiKeyIsRefusedWithoutEchoingAKey()
    {
        var r = CliTests.Run("serve", "--model", "m", "--api-key", "");
        Assert.That(r.Code, Is.EqualTo(2));
        Assert.That(r.Err, Does.Contain("option --api-key must be printable ASCII without spaces (an HTTP header carries it); found an empty key."));
        var e = Assert.ThrowsAsync<XLstmOnnxException>(() => Serve(new ServerOptions { ApiKey = "my secret" }))!;
        Assert.That(e.Message, Does.Contain("ApiKey").And.Not.Contain("my secret"), "the key is not repeated in logs");
    }

    [Test]
    public async Task TheDefaultListenerIsOnLoopbackOnly()
    {
        Assert.That(_server.Url, Does.StartWith("http://127.0.0.1:"));
        int port = new Uri(_server.Url).Port;
        // an address of this machine that is not loopback: nothing listens on it
        var other = NetworkInterface.GetAllNetworkInterfaces().Where(n => n.OperationalStatus == OperationalStatus.Up)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses).Select(a => a.Address)
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));
        Assume.That(other, Is.Not.Null, "this machine has no address but loopback");
        using var tcp = new TcpClient();
        var refused = Assert.CatchAsync<SocketException>(() => tcp.ConnectAsync(other!, port));
        Assert.That(refused!.SocketErrorCode, Is.EqualTo(SocketError.ConnectionRefused), $"{other}:{port} is not listened on");
        using var loopback = new TcpClient();
        await loopback.ConnectAsync(IPAddress.Loopback, port);
    }

    [Test]
    public async Task AnAddressBeyondLoopbackNeedsAllowRemote()
    {
        var e = Assert.ThrowsAsync<XLstmOnnxException>(() => Serve(new ServerOptions { Host = "0.0.0.0" }))!;
        Assert.That(e.Message, Does.Contain("ServerOptions.AllowRemote"));
        await using var remote = await Serve(new ServerOptions { Host = "0.0.0.0", AllowRemote = true, ApiKey = Key });
        Assert.That(remote.Url.Host, Is.EqualTo("0.0.0.0"));
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{remote.Url.Port}") };
        var open = await Send(http, HttpMethod.Get, "/v1/models", r => r.Headers.Host = "gpu-box.internal");
        Assert.That(open.Status, Is.EqualTo(HttpStatusCode.Unauthorized), "beyond loopback, the key guards it (any Host name is fine)");
        var keyed = await Send(http, HttpMethod.Get, "/v1/models", r => { r.Headers.Host = "gpu-box.internal"; r.Headers.Authorization = new("Bearer", Key); });
        Assert.That(keyed.Status, Is.EqualTo(HttpStatusCode.OK), keyed.Body);
    }

    [Test]
    public void APortInUseIsAnErrorOfThePortOptionWithoutAStack()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        int port = ((IPEndPoint)taken.LocalEndpoint).Port;
        var e = Assert.ThrowsAsync<XLstmOnnxException>(() => OpenAiServer.StartAsync(_server.Engine, new ServerOptions { Port = port, Logs = NullLoggerProvider.Instance }))!;
        Assert.That(e.Parameter, Is.EqualTo("ServerOptions.Port"));
        Assert.That(e.Message, Does.Contain($"{port}: cannot listen on 127.0.0.1").And.Contain("in use"));
        var r = CliTests.Run("serve", "--model", _server.Model, "--port", port.ToString());
        Assert.That(r.Code, Is.EqualTo(2), r.Err);
        Assert.That(r.Err, Does.Contain($"error: option --port {port}: cannot listen on 127.0.0.1"));
        Assert.That(r.Err, Does.Not.Contain("   at ").And.Not.Contain("Exception"), "no stack trace, no exception names");
    }

    [TestCase("evil.example")]
    [TestCase("evil.example:8000")]
    [TestCase("127.0.0.1.nip.io")]
    [TestCase("10.0.0.7")]
    public async Task OnLoopbackAHostThatIsNotALoopbackNameIsRefused(string host)
    {
        var r = await Send(_server.Http, HttpMethod.Post, "/v1/completions", m => m.Headers.Host = host, Completion);
        Assert.That(r.Status, Is.EqualTo(HttpStatusCode.Forbidden), r.Body);
        var error = Error(r.Body);
        Assert.That(error.GetProperty("code").GetString(), Is.EqualTo("host_not_allowed"));
        Assert.That(error.GetProperty("message").GetString(), Does.Contain(host));
        Assert.That(_server.Engine.Metrics.QueueDepth, Is.Zero);
    }

    [TestCase("localhost")]
    [TestCase("LOCALHOST:8000")]
    [TestCase("127.0.0.1")]
    [TestCase("127.0.0.1:8000")]
    [TestCase("[::1]:8000")]
    public async Task LoopbackHostNamesAreServed(string host)
    {
        var r = await Send(_server.Http, HttpMethod.Post, "/v1/completions", m => m.Headers.Host = host, Completion);
        Assert.That(r.Status, Is.EqualTo(HttpStatusCode.OK), r.Body);
    }

    [TestCase("http://evil.example")]
    [TestCase("https://localhost.evil.example")]
    [TestCase("null")]
    public async Task ACrossOriginRequestIsRefusedUnlessItsOriginIsAllowed(string origin)
    {
        var r = await Send(_server.Http, HttpMethod.Post, "/v1/completions", m => m.Headers.Add("Origin", origin), Completion);
        Assert.That(r.Status, Is.EqualTo(HttpStatusCode.Forbidden), r.Body);
        Assert.That(Error(r.Body).GetProperty("code").GetString(), Is.EqualTo("origin_not_allowed"));
        Assert.That(r.Response.Headers.Contains("Access-Control-Allow-Origin"), Is.False);
        var preflight = await Send(_server.Http, HttpMethod.Options, "/v1/completions", m =>
        {
            m.Headers.Add("Origin", origin);
            m.Headers.Add("Access-Control-Request-Method", "POST");
        });
        Assert.That(preflight.Status, Is.EqualTo(HttpStatusCode.Forbidden), "no preflight either");
    }

    [Test]
    public async Task LoopbackPagesAndAllowedOriginsGetCors()
    {
        var local = await Send(_server.Http, HttpMethod.Post, "/v1/completions", m => m.Headers.Add("Origin", "http://localhost:3000"), Completion);
        Assert.That(local.Status, Is.EqualTo(HttpStatusCode.OK), local.Body);
        Assert.That(local.Response.Headers.GetValues("Access-Control-Allow-Origin"), Is.EqualTo(new[] { "http://localhost:3000" }));

        await using var app = await Serve(new ServerOptions { AllowedOrigins = ["https://App.Example.com:443/"], ApiKey = Key });
        const string origin = "https://app.example.com";
        var preflight = await Send(app.Http, HttpMethod.Options, "/v1/chat/completions", m =>
        {
            m.Headers.Add("Origin", origin);
            m.Headers.Add("Access-Control-Request-Method", "POST");
            m.Headers.Add("Access-Control-Request-Headers", "authorization,content-type");
        });
        Assert.That(preflight.Status, Is.EqualTo(HttpStatusCode.NoContent), "a preflight needs no key: browsers send none");
        Assert.That(preflight.Response.Headers.GetValues("Access-Control-Allow-Origin"), Is.EqualTo(new[] { origin }));
        Assert.That(string.Join(",", preflight.Response.Headers.GetValues("Access-Control-Allow-Headers")).ToLowerInvariant(), Does.Contain("authorization").And.Contain("content-type"));
        Assert.That(string.Join(",", preflight.Response.Headers.GetValues("Access-Control-Allow-Methods")), Does.Contain("POST"));

        var post = await Send(app.Http, HttpMethod.Post, "/v1/completions", m => { m.Headers.Add("Origin", origin); m.Headers.Authorization = new("Bearer", Key); }, Completion);
        Assert.That(post.Status, Is.EqualTo(HttpStatusCode.OK), post.Body);
        Assert.That(post.Response.Headers.GetValues("Access-Control-Allow-Origin"), Is.EqualTo(new[] { origin }));
        Assert.That(post.Response.Headers.GetValues("Access-Control-Expose-Headers"), Does.Contain(OpenAiServer.SeedHeader));
        var other = await Send(app.Http, HttpMethod.Post, "/v1/completions", m => { m.Headers.Add("Origin", "https://other.example.com"); m.Headers.Authorization = new("Bearer", Key); }, Completion);
        Assert.That(other.Status, Is.EqualTo(HttpStatusCode.Forbidden));
    }

    [Test]
    public async Task TheApiKeyGuardsEverythingButHealth()
    {
        await using var app = await Serve(new ServerOptions { ApiKey = Key });
        foreach (var (method, path, body) in new (HttpMethod, string, object?)[]
        {
            (HttpMethod.Post, "/v1/completions", Completion), (HttpMethod.Get, "/v1/models", null), (HttpMethod.Get, "/metrics", null),
            (HttpMethod.Post, "/tokenize", new { prompt = "x" }), (HttpMethod.Get, "/no/such/route", null),
        })
        {
            var none = await Send(app.Http, method, path, body: body);
            Assert.That(none.Status, Is.EqualTo(HttpStatusCode.Unauthorized), $"{method} {path}");
            var error = Error(none.Body);
            Assert.That(error.GetProperty("code").GetString(), Is.EqualTo("invalid_api_key"));
            Assert.That(error.GetProperty("message").GetString(), Does.Contain("Authorization: Bearer"));
            Assert.That(none.Response.Headers.WwwAuthenticate.ToString(), Is.EqualTo("Bearer"));
            var wrong = await Send(app.Http, method, path, m => m.Headers.Authorization = new("Bearer", Key + "x"), body);
            Assert.That(wrong.Status, Is.EqualTo(HttpStatusCode.Unauthorized), $"{method} {path}");
            Assert.That(Error(wrong.Body).GetProperty("message").GetString(), Is.EqualTo("Incorrect API key provided."));
            var right = await Send(app.Http, method, path, m => m.Headers.Authorization = new("Bearer", Key), body);
            Assert.That((int)right.Status, Is.Not.EqualTo(401).And.Not.EqualTo(403), $"{method} {path}: {right.Body}");
        }
        Assert.That((await Send(app.Http, HttpMethod.Get, "/health")).Status, Is.EqualTo(HttpStatusCode.OK), "health checks need no key");
    }

    /// <summary>The CLI itself: serve on loopback with the key from XLSTM_API_KEY (not on the command line), then loadtest with and without it.</summary>
    [Test]
    public async Task ServeTakesTheKeyFromTheEnvironmentAndLoadtestSaysWhatIsWrong()
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { "exec", Path.Combine(AppContext.BaseDirectory, "xlstm-onnx.dll"), "serve", "--model", _server.Model, "--port", "0", "--model-name", "kjv" })
        {
            psi.ArgumentList.Add(a);
        }
        psi.Environment["XLSTM_API_KEY"] = Key;
        using var serve = Process.Start(psi)!;
        try
        {
            string? url = null;
            var read = Task.Run(async () =>
            {
                while (await serve.StandardError.ReadLineAsync() is { } line)
                {
                    if (Regex.Match(line, @"serving 'kjv' on (http://\S+) ") is { Success: true } m) return m.Groups[1].Value;
                }
                return null;
            });
            url = await read.WaitAsync(TimeSpan.FromSeconds(60));
            Assert.That(url, Does.StartWith("http://127.0.0.1:"), "loopback by default");
            using var http = new HttpClient { BaseAddress = new Uri(url!) };
            Assert.That((await http.GetAsync("/v1/models")).StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));
            http.DefaultRequestHeaders.Authorization = new("Bearer", Key);
            Assert.That((await http.GetAsync("/v1/models")).StatusCode, Is.EqualTo(HttpStatusCode.OK));

            var noKey = CliTests.Run("loadtest", "--url", url!, "--model-name", "kjv", "--seconds", "1");
            Assert.That(noKey.Code, Is.EqualTo(2), noKey.Err);
            Assert.That(noKey.Err, Does.Contain("wants an API key (401): give --api-key or set XLSTM_API_KEY"));
            var wrongModel = CliTests.Run("loadtest", "--url", url!, "--model-name", "gpt-4", "--seconds", "1", "--api-key", Key);
            Assert.That(wrongModel.Code, Is.EqualTo(2), wrongModel.Err);
            Assert.That(wrongModel.Err, Does.Contain("error: option --model-name: the server at").And.Contain("serves 'kjv'; found 'gpt-4'."));
            var ok = CliTests.Run("loadtest", "--url", url!, "--model-name", "kjv", "--seconds", "1", "--clients", "2", "--max-tokens", "4", "--check-alone", "2", "--api-key", Key);
            Assert.That(ok.Code, Is.Zero, ok.Out + ok.Err);
            Assert.That(JsonDocument.Parse(ok.Out).RootElement.GetProperty("failed").GetInt32(), Is.Zero);
        }
        finally
        {
            serve.Kill();
            await serve.WaitForExitAsync();
        }
    }

    /// <summary>
    /// Against a server that takes one request and queues one, 8 clients are refused most of the time: they come back
    /// after Retry-After plus backoff, so the 429s stay a few per client and second (it used to be thousands), every
    /// request is served in the end, and the report counts them.
    /// </summary>
    [Test]
    public async Task LoadtestBacksOffOn429AndCountsThem()
    {
        using var session = XLstmOnnx.Runtime.XLstmSession.Load(_server.Model);
        using var engine = new ServingEngine(session, new ServingOptions { MaxBatch = 1, QueueCapacity = 1 });
        var (app, url) = await OpenAiServer.StartAsync(engine, new ServerOptions { Port = 0, ModelId = "kjv", Logs = NullLoggerProvider.Instance });
        await using var _ = app;
        const int clients = 8, seconds = 3;
        var r = CliTests.Run("loadtest", "--url", url, "--model-name", "kjv", "--clients", $"{clients}", "--seconds", $"{seconds}", "--max-tokens", "8", "--check-alone", "2");
        Assert.That(r.Code, Is.Zero, r.Out + r.Err);
        var report = JsonDocument.Parse(r.Out).RootElement;
        int limited = report.GetProperty("rate_limited_429").GetInt32();
        Assert.That(limited, Is.GreaterThan(0), "the queue refused some");
        Assert.That(limited, Is.LessThanOrEqualTo(clients * (seconds + 2)), "at most one 429 a client and second (Retry-After: 1)");
        Assert.That(report.GetProperty("failed").GetInt32(), Is.Zero, "every request counted was served after its retries");
        Assert.That(report.GetProperty("rate_limit_wait_s").GetDouble(), Is.GreaterThanOrEqualTo(limited * 0.5), "each retry waited");
    }

    [Test]
    public void RetryDelaysGrowWithJitterAfterRetryAfter()
    {
        var random = new Random(1);
        var delays = Enumerable.Range(0, 12).Select(a => Cli.LoadTestCommand.RetryDelay(a, null, random).TotalMilliseconds).ToArray();
        Assert.That(delays, Is.All.InRange(0, 10_000), "full jitter under a cap of 10 s");
        Assert.That(delays.Take(3).Max(), Is.LessThan(400), "the first waits are short: 100, 200, 400 ms at most");
        var late = Enumerable.Range(0, 50).Select(_ => Cli.LoadTestCommand.RetryDelay(10, null, random).TotalMilliseconds).ToArray();
        Assert.That(late.Max(), Is.GreaterThan(5_000), "later attempts may wait long");
        Assert.That(late.Distinct().Count(), Is.EqualTo(50), "clients refused together do not come back together");
        var told = Cli.LoadTestCommand.RetryDelay(0, TimeSpan.FromSeconds(2), random);
        Assert.That(told.TotalMilliseconds, Is.InRange(2000, 2100), "the server's Retry-After, then the jitter");
    }

    [Test]
    public void LoadtestWithNoServerListeningIsAClearError()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop(); // a port nothing listens on
        var r = CliTests.Run("loadtest", "--url", $"http://127.0.0.1:{port}", "--model-name", "kjv", "--seconds", "1");
        Assert.That(r.Code, Is.EqualTo(2), r.Out + r.Err);
        Assert.That(r.Err, Does.Contain($"error: option --url: no server answers at http://127.0.0.1:{port}/"));
        Assert.That(r.Err, Does.Not.Contain("   at "));
    }
}
