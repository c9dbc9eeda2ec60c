#!/usr/bin/env python3
"""What moving a conversation costs (docs/routing.md, "Moving a conversation"), measured through the router.

For each context length L (prompt tokens of the first turn), REPS times: a conversation's first turn goes through the
router (a new session, random token ids); then its second turn (the first turn's prompt and answer and 16 new ids) is
timed three ways, each a streaming greedy completion, time to first token at the client:
  moved:   its replica is drained (POST /internal/drain) and the turn goes through the router, which hands the state
           over (the X-Xlstm-Handoff header gives the hand-off's own time and bytes) to the other replica;
  rebuilt: the same turn straight at a replica that holds no prefix of it (the whole transcript is read again: what
           a move without a hand-off costs);
  stayed:  the same turn straight at the drained replica (still serving), which holds the first turn's state.
The moved turn's greedy tokens are compared with the stayed turn's. Replicas are undrained after each move.

    handoff_bench.py ROUTER_URL --replicas r0=URL,r1=URL --token TOKEN [--contexts 512,4096,16384] [--reps 3]
                     [--vocab 50304] [--model x] [--out FILE]
"""
import argparse
import http.client
import json
import random
import statistics
import time
import urllib.parse


def post(url, path, body=None, headers=None, method="POST", stream=False):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    h = {"Content-Type": "application/json", **(headers or {})}
    start = time.perf_counter()
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=h)
    resp = conn.getresponse()
    if not stream:
        data = resp.read()
        conn.close()
        return resp.status, dict(resp.getheaders()), data, None
    first, ids, status = None, [], resp.status
    while True:
        line = resp.readline()
        if not line or line.startswith(b"data: [DONE]"):
            break
        if line.startswith(b"data: "):
            if first is None:
                first = (time.perf_counter() - start) * 1000
            ev = json.loads(line[6:])
            if "error" in ev:
                raise RuntimeError(f"{url}: {ev['error']}")
            ids += ev["choices"][0].get("token_ids") or []
    headers = dict(resp.getheaders())
    conn.close()
    if status != 200:
        raise RuntimeError(f"{url}{path}: HTTP {status}")
    return status, headers, ids, first


def completion(url, model, prompt, max_tokens, session=None):
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "return_token_ids": True}
    return post(url, "/v1/completions", body, {"X-Session-Id": session} if session else None, stream=True)


def wait_replica(router, rid, draining):
    for _ in range(400):
        _, _, data, _ = post(router, "/health", method="GET")
        r = next(x for x in json.loads(data)["replicas"] if x["id"] == rid)
        if r["draining"] == draining and r["healthy"] != draining:
            return
        time.sleep(0.05)
    raise RuntimeError(f"replica {rid} never {'draining' if draining else 'back'}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("router")
    p.add_argument("--replicas", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--contexts", default="512,4096,16384")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--model", default="x")
    p.add_argument("--out")
    a = p.parse_args()
    replicas = dict(x.split("=", 1) for x in a.replicas.split(","))
    tok = {"X-Internal-Token": a.token}
    rng = random.Random(17)
    rows = []
    for L in (int(x) for x in a.contexts.split(",")):
        runs = []
        for rep in range(a.reps):
            first = [rng.randrange(1, a.vocab) for _ in range(L)]
            _, h1, ids1, _ = completion(a.router, a.model, first, 16, session=f"h{L}-{rep}")
            home = h1["X-Xlstm-Replica"]
            other = next(r for r in replicas if r != home)
            second = first + ids1 + [rng.randrange(1, a.vocab) for _ in range(16)]
            post(replicas[home], "/internal/drain", headers=tok)
            wait_replica(a.router, home, True)
            _, hm, moved, ttft_moved = completion(a.router, a.model, second, 16, session=f"h{L}-{rep}")
            handoff = hm.get("X-Xlstm-Handoff", "")
            fields = dict(kv.strip().split("=", 1) for kv in handoff.split(";") if "=" in kv)
            _, _, stayed, ttft_stayed = completion(replicas[home], a.model, second, 16)
            # the rebuild: a fresh random prefix of the same length keeps the other replica's cache out of it
            fresh = [rng.randrange(1, a.vocab) for _ in range(len(second))]
            _, _, _, ttft_rebuilt = completion(replicas[other], a.model, fresh, 16)
            post(replicas[home], "/internal/drain", headers=tok, method="DELETE")
            wait_replica(a.router, home, False)
            run = {"context": L, "home": home, "moved_to": hm.get("X-Xlstm-Replica"), "route": hm.get("X-Xlstm-Route"),
                   "handoff": handoff, "handoff_ms": float(fields.get("ms", "nan")), "handoff_bytes": int(fields.get("bytes", "0")),
                   "handoff_tokens": int(fields.get("tokens", "0")), "ttft_moved_ms": ttft_moved,
                   "ttft_stayed_ms": ttft_stayed, "ttft_rebuilt_ms": ttft_rebuilt, "greedy_equal": moved == stayed}
            print(json.dumps(run), flush=True)
            runs.append(run)
        med = lambda k: statistics.median(r[k] for r in runs[1:] or runs)  # the first run warms the paths
        rows.append({"context": L, "reps": a.reps, "handoff_ms": med("handoff_ms"), "handoff_bytes": runs[-1]["handoff_bytes"],
                     "ttft_moved_ms": med("ttft_moved_ms"), "ttft_stayed_ms": med("ttft_stayed_ms"),
                     "ttft_rebuilt_ms": med("ttft_rebuilt_ms"), "greedy_equal": sum(r["greedy_equal"] for r in runs), "runs": runs})
        r = rows[-1]
        print(f"context {L}: hand-off {r['handoff_ms']:.1f} ms ({r['handoff_bytes'] / 1e6:.1f} MB); TTFT of the turn: moved "
              f"{r['ttft_moved_ms']:.1f} ms, rebuilt {r['ttft_rebuilt_ms']:.1f} ms, stayed {r['ttft_stayed_ms']:.1f} ms; "
              f"greedy equal {r['greedy_equal']} of {a.reps} (medians of runs 2..{a.reps})", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
