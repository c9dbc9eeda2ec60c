#!/usr/bin/env python3
"""What the router adds to a request, measured against going straight at a replica, interleaved request by request.

Each pair sends a request through the router and one like it (a prompt of the same kind, never the same prompt: no
prefix-cache hits) straight at a replica, in alternating order, one request at a time. Given several replicas, the
straight requests go to each in turn, as the router spreads its own: an idle replica wakes more slowly than a busy
one, and sending every straight request to one replica kept that one the warmest. Interleaving cancels the drift of a shared machine's load; each figure is the median of the per-pair
differences (after 10 warm-up pairs). Measured:
  ttft:  a streaming greedy completion (a random token-id prompt of 16 to 63 ids, 4 tokens): time to the first SSE data line;
  plain: GET /v1/models, and a completion the replica refuses (400, max_tokens -1): no model work, the proxy's own
         cost; --plain N pairs each.
Clients keep one connection per address alive, with TCP_NODELAY, as pooled HTTP clients (the OpenAI SDKs', .NET's
HttpClient) do. --new-connections opens a connection per request with Python's defaults instead (Nagle's algorithm on,
headers and body written in two segments), which is how the first version of this script measured.

    ttft_pairs.py ROUTER_URL REPLICA_URL[,REPLICA_URL...] [--pairs 200] [--plain 0] [--vocab 1000] [--model kjv] [--new-connections] [--out FILE]
"""
import argparse
import http.client
import json
import random
import socket
import statistics
import time
import urllib.parse

_connections = {}


def connection(url, fresh):
    u = urllib.parse.urlparse(url)
    if fresh:
        return http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    if url not in _connections:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _connections[url] = conn
    return _connections[url]


def timed_ms(url, method, path, body, fresh, stream, status=200):
    """Milliseconds to the first SSE data line (stream) or to the whole answer (of the given status)."""
    conn = connection(url, fresh)
    start = time.perf_counter()
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != status:
        raise RuntimeError(f"{url}{path}: HTTP {resp.status}: {resp.read()[:200]!r}")
    first = None
    if stream:
        while True:
            line = resp.readline()
            if not line:
                break
            if first is None and line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                first = (time.perf_counter() - start) * 1000
            if line.startswith(b"data: [DONE]"):
                break
    resp.read()  # the rest (a chunked body's end), so that the connection is reused
    if first is None:
        first = (time.perf_counter() - start) * 1000
    if fresh:
        conn.close()
    return first


def pairs(router, replicas, n, request, fresh):
    via, direct, diffs = [], [], []
    for i in range(n):
        replica = replicas[i % len(replicas)]  # in turn, as the router spreads its own requests
        got = {}
        for url in ((router, replica) if i % 2 == 0 else (replica, router)):
            method, path, body, stream, status = request(i)
            got[url] = timed_ms(url, method, path, body, fresh, stream, status)
        via.append(got[router])
        direct.append(got[replica])
        diffs.append(got[router] - got[replica])
    warm = slice(10, None)  # the first pairs warm both paths' connections and code
    return {
        "pairs": n,
        "p50_router_ms": statistics.median(via[warm]),
        "p50_replica_ms": statistics.median(direct[warm]),
        "difference_median_ms": statistics.median(diffs[warm]),
        "difference_p90_ms": sorted(diffs[warm])[int(0.9 * len(diffs[warm]))],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("router")
    p.add_argument("replica", help="a replica's base URL, or several, comma-separated: the straight requests go to each in turn")
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--plain", type=int, default=0)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--model", default="kjv")
    p.add_argument("--new-connections", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    rng = random.Random(7)

    def completion(_):
        # a prompt of its own for each request: the second of a pair sent the same prompt would find it in a prefix
        # cache (the replica's own, when it went to the same one), which biased the first version of this script
        ids = [rng.randrange(1, a.vocab) for _ in range(rng.randrange(16, 64))]
        body = json.dumps({"model": a.model, "prompt": ids, "max_tokens": 4, "temperature": 0, "stream": True, "ignore_eos": True})
        return "POST", "/v1/completions", body, True, 200

    replicas = a.replica.split(",")
    t = pairs(a.router, replicas, a.pairs, completion, a.new_connections)
    result = {"connections": "new per request" if a.new_connections else "kept alive, TCP_NODELAY",
              "pairs": t["pairs"], "ttft_p50_router_ms": t["p50_router_ms"], "ttft_p50_replica_ms": t["p50_replica_ms"],
              "difference_median_ms": t["difference_median_ms"], "difference_p90_ms": t["difference_p90_ms"]}
    if a.plain:
        result["get_models"] = pairs(a.router, replicas, a.plain, lambda _: ("GET", "/v1/models", None, False, 200), a.new_connections)
        refused = json.dumps({"model": a.model, "prompt": [1, 2, 3], "max_tokens": -1})  # the replica's 400, no model work
        result["post_refused"] = pairs(a.router, replicas, a.plain, lambda _: ("POST", "/v1/completions", refused, False, 400), a.new_connections)
    print(json.dumps(result))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
