#!/usr/bin/env python3
"""transformers' xLSTMForCausalLM at the xLSTM-7b config on the GPU: the baseline that `xlstm-onnx bench` is compared with.

Random bf16 weights (the speed does not depend on them), the stock transformers path (its native torch kernels; no
`xlstm`/`mlstm_kernels` package), HF's default cache (model dtype). Measures, as `xlstm-onnx bench` does:
  prefill: one forward over a B x P prompt (HF computes fp32 logits for every position), then the argmax of the last;
  decode:  greedy steps of one token, eager and replayed as one captured CUDA graph per step.
Timings are medians over --reps after a warm-up, with torch.cuda.synchronize() around each timed region.

  python3 tools/bench/hf_baseline.py --config models/presets/xlstm-7b.json --batch 1,16 --prompt 2048 --new 64 --out hf.json
"""
import argparse
import json
import statistics
import sys
import time
import traceback

import torch


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--num-blocks", type=int, default=None)
    p.add_argument("--batch", default="1,16")
    p.add_argument("--prompt", type=int, default=2048)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", required=True)
    return p.parse_args()


def sync_time(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main():
    a = parse()
    import transformers
    from transformers import xLSTMConfig, xLSTMForCausalLM
    from transformers.models.xlstm.modeling_xlstm import xLSTMCache

    cfg = json.load(open(a.config))
    if a.num_blocks:
        cfg["num_blocks"] = cfg["num_hidden_layers"] = a.num_blocks
    # stock transformers: its own torch kernels (the preset names NX-AI's Triton kernels, which need mlstm_kernels)
    cfg.update(chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native", step_kernel="native")
    config = xLSTMConfig(**cfg)
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    t0 = time.perf_counter()
    with torch.device("cuda"):
        model = xLSTMForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params/1e9:.3f} B params, {a.dtype}, built in {time.perf_counter()-t0:.1f} s", flush=True)
    result = {
        "command": "python3 " + " ".join(sys.argv),
        "torch": torch.__version__, "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(),
        "params": params, "dtype": a.dtype, "kernels": "transformers native (chunkwise--native_autograd, native_sequence__native, native)",
        "cache": "xLSTMCache in the model dtype (transformers' default)", "results": [],
    }
    gen = torch.Generator(device="cuda").manual_seed(1234)
    for b in [int(x) for x in a.batch.split(",")]:
        row = {"batch": b, "prompt": a.prompt, "new": a.new}
        try:
            ids = torch.randint(0, config.vocab_size, (b, a.prompt), device="cuda", generator=gen)
            torch.cuda.reset_peak_memory_stats()

            @torch.no_grad()
            def prefill():
                out = model(input_ids=ids, use_cache=True)
                return out.cache_params, out.logits[:, -1].argmax(-1, keepdim=True)

            prefill()  # warm-up
            times = []
            for _ in range(a.reps):
                dt, (cache, nxt) = sync_time(prefill)
                times.append(dt)
            ttft = statistics.median(times)
            row.update(ttft_ms=ttft * 1e3, prefill_tokens_per_s=b * a.prompt / ttft, ttft_ms_all=[t * 1e3 for t in times])

            @torch.no_grad()
            def step(tok):
                out = model(input_ids=tok, cache_params=cache, use_cache=True)
                return out.logits[:, -1].argmax(-1, keepdim=True)

            for _ in range(3):
                nxt = step(nxt)
            eager = []
            for _ in range(a.reps):
                def loop():
                    t = nxt
                    for _ in range(a.new - 1):
                        t = step(t)
                    return t
                dt, _ = sync_time(loop)
                eager.append(dt / (a.new - 1))
            row.update(eager_ms_per_token=statistics.median(eager) * 1e3, eager_decode_tokens_per_s=b / statistics.median(eager))
            print(f"B{b}: prefill {row['ttft_ms']:.1f} ms ({row['prefill_tokens_per_s']:.0f} tok/s), eager {row['eager_ms_per_token']:.2f} ms/token", flush=True)

            # CUDA graph of one decode step: the cache tensors are updated in place (copy_), so they are static buffers
            static_ids = nxt.clone()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    static_next = step(static_ids)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_next = step(static_ids)
            graphed = []
            for _ in range(a.reps):
                def loop():
                    for _ in range(a.new - 1):
                        static_ids.copy_(static_next)
                        graph.replay()
                dt, _ = sync_time(loop)
                graphed.append(dt / (a.new - 1))
            row.update(graph_ms_per_token=statistics.median(graphed) * 1e3, graph_decode_tokens_per_s=b / statistics.median(graphed))
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
            print(f"B{b}: CUDA graph {row['graph_ms_per_token']:.2f} ms/token, peak {row['peak_gpu_mib']:.0f} MiB", flush=True)
            del graph, cache
        except Exception as e:  # record what failed and go on with the next batch size
            row["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        result["results"].append(row)
        torch.cuda.empty_cache()
        json.dump(result, open(a.out, "w"), indent=2)
    json.dump(result, open(a.out, "w"), indent=2)


if __name__ == "__main__":
    main()
