using System.Globalization;
using System.Net.Http.Headers;
using Microsoft.AspNetCore.Http;

namespace XLstmOnnx.Cli.Serving;

/// <summary>
/// What a replica's <c>GET /health</c> says about its load and whether it is draining (docs/routing.md, "Draining a
/// replica"). The values travel in response headers, so that a router's health probe reads them without reading a body:
/// sequences in the batch (<see cref="RunningHeader"/>), requests waiting for a slot (<see cref="WaitingHeader"/>), the
/// state pool's slots (<see cref="SlotsHeader"/>) and <see cref="StateHeader"/> (<c>ok</c> or <c>draining</c>). The body
/// says the same in JSON.
/// </summary>
public sealed record ReplicaLoad(int Running, int Waiting, int Slots, bool Draining)
{
    public const string RunningHeader = "X-Xlstm-Running";
    public const string WaitingHeader = "X-Xlstm-Waiting";
    public const string SlotsHeader = "X-Xlstm-Slots";
    public const string StateHeader = "X-Xlstm-State";

    /// <summary>A request sent now would wait for a slot.</summary>
    public bool Full => Running + Waiting >= Slots;

    /// <summary><c>ok</c> or <c>draining</c>.</summary>
    public string State => Draining ? "draining" : "ok";

    public void WriteTo(IHeaderDictionary headers)
    {
        headers[RunningHeader] = Running.ToString(CultureInfo.InvariantCulture);
        headers[WaitingHeader] = Waiting.ToString(CultureInfo.InvariantCulture);
        headers[SlotsHeader] = Slots.ToString(CultureInfo.InvariantCulture);
        headers[StateHeader] = State;
    }

    /// <summary>The load a <c>/health</c> answer reports, or null when it carries no such headers (not a <c>serve</c> replica, or an older one).</summary>
    public static ReplicaLoad? Read(HttpResponseHeaders headers)
    {
        int? Int(string name) => headers.TryGetValues(name, out var v) && int.TryParse(v.FirstOrDefault(), NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : null;
        if (Int(RunningHeader) is not { } running || Int(WaitingHeader) is not { } waiting || Int(SlotsHeader) is not { } slots || slots < 1) return null;
        bool draining = headers.TryGetValues(StateHeader, out var s) && s.FirstOrDefault() == "draining";
        return new ReplicaLoad(running, waiting, slots, draining);
    }
}
