#!/usr/bin/env python3
"""Time to first token through the router against straight at a replica, interleaved request by request.

Each pair sends the same streaming greedy completion (a random token-id prompt) through the router and straight at a
replica, in alternating order, one request at a time, and times the first SSE data line. Interleaving cancels the drift
of a shared machine's load; the figure is the median of the per-pair differences (tools/route/bench_route.sh).

    ttft_pairs.py ROUTER_URL REPLICA_URL [--pairs 200] [--vocab 1000] [--model kjv] [--out FILE]
"""
import argparse
import http.client
import json
import random
import statistics
import time
import urllib.parse


def first_token_ms(url, body):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        start = time.perf_counter()
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {resp.read()[:200]!r}")
        first = None
        while True:
            line = resp.readline()
            if not line:
                break
            if first is None and line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                first = (time.perf_counter() - start) * 1000
            if line.startswith(b"data: [DONE]"):
                break
        return first
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("router")
    p.add_argument("replica")
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--model", default="kjv")
    p.add_argument("--out")
    a = p.parse_args()
    rng = random.Random(7)
    via, direct, diffs = [], [], []
    for i in range(a.pairs):
        ids = [rng.randrange(1, a.vocab) for _ in range(rng.randrange(16, 64))]
        body = json.dumps({"model": a.model, "prompt": ids, "max_tokens": 4, "temperature": 0, "stream": True, "ignore_eos": True})
        order = [(a.router, via), (a.replica, direct)] if i % 2 == 0 else [(a.replica, direct), (a.router, via)]
        got = {}
        for url, sink in order:
            got[url] = first_token_ms(url, body)
            sink.append(got[url])
        diffs.append(got[a.router] - got[a.replica])
    warm = slice(10, None)  # the first pairs warm both paths' connections and code
    result = {
        "pairs": a.pairs,
        "ttft_p50_router_ms": statistics.median(via[warm]),
        "ttft_p50_replica_ms": statistics.median(direct[warm]),
        "difference_median_ms": statistics.median(diffs[warm]),
        "difference_p90_ms": sorted(diffs[warm])[int(0.9 * len(diffs[warm]))],
    }
    print(json.dumps(result))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
