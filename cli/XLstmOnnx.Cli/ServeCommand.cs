using System.CommandLine;
using Microsoft.Extensions.Hosting;
using XLstmOnnx.Cli.Serving;
using XLstmOnnx.Runtime.Serving;

namespace XLstmOnnx.Cli;

/// <summary><c>xlstm-onnx serve --model DIR [--device cpu|cuda] [--port N] [--max-batch N]</c>: an OpenAI-compatible server on loopback.</summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var host = new Option<string>("--host") { Description = "Address to listen on (loopback by default).", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port (0: any free one).", DefaultValueFactory = _ => 8000 };
        var maxBatch = new Option<int>("--max-batch") { Description = "Sequences decoded together.", DefaultValueFactory = _ => 8 };
        var queue = new Option<int>("--queue") { Description = "Requests that may wait; more get 429.", DefaultValueFactory = _ => 64 };
        var cacheMb = new Option<int>("--prefix-cache-mb") { Description = "Memory for cached prefix states (0: off).", DefaultValueFactory = _ => 256 };
        var name = new Option<string?>("--model-name") { Description = "Model id in the API (default: the folder's name)." };
        var cmd = new Command("serve", "OpenAI-compatible HTTP server with continuous batching and a prefix-state cache.") { host, port, maxBatch, queue, cacheMb, name };
        model.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Run(() =>
        {
            if (r.GetValue(maxBatch) < 1) throw new XLstmOnnxException($"option --max-batch must be at least 1; found {r.GetValue(maxBatch)}.");
            using var session = model.Load(r);
            using var engine = new ServingEngine(session, new ServingOptions
            {
                MaxBatch = r.GetValue(maxBatch),
                QueueCapacity = r.GetValue(queue),
                PrefixCacheBytes = (long)r.GetValue(cacheMb) << 20,
            });
            var options = new ServerOptions
            {
                Host = r.GetValue(host)!,
                Port = r.GetValue(port),
                ModelId = r.GetValue(name) ?? Path.GetFileName(Path.GetFullPath(r.GetValue(model.Model)!).TrimEnd('/')),
            };
            var (app, url) = OpenAiServer.StartAsync(engine, options).GetAwaiter().GetResult();
            Console.Error.WriteLine($"serving '{options.ModelId}' on {url} (OpenAI API under /v1; /health, /metrics); Ctrl+C stops");
            app.WaitForShutdownAsync().GetAwaiter().GetResult();
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 0;
        }));
        return cmd;
    }
}
