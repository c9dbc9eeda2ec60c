#!/usr/bin/env bash
# Runs on the GPU machine after the staged CLI is unpacked into /tmp/xlstm (see publish.sh):
# every fixture exports, verifies on the CUDA EP, and greedy generation on CUDA equals transformers' ids.
# Optional: XLSTM_CUSTOMOPS_PATH set -> the same with --mlstm-kernels custom.  Usage: bash tools/gpu/check_cuda.sh OUTDIR
set -uo pipefail
out=${1:?output folder}
cli=/tmp/xlstm/.gpu/cli/xlstm-onnx
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/summary.txt" 2>&1
status=0
kernels=(onnx)
[ -n "${XLSTM_CUSTOMOPS_PATH:-}" ] && kernels+=(custom)
for k in "${kernels[@]}"; do
  for d in tests/fixtures/*/; do
    m=$(basename "$d")
    [ -f "$d/reference.safetensors" ] || continue
    extra=(); [ "$k" = custom ] && extra=(--mlstm-kernels custom)
    rm -rf "/tmp/x/$k/$m"
    "$cli" export --checkpoint "$d" --output "/tmp/x/$k/$m" "${extra[@]}" >> "$out/export.log" 2>&1 || status=1
    echo "== verify $k $m (cuda)" >> "$out/verify.log"
    "$cli" verify --model "/tmp/x/$k/$m" --reference "$d/reference.safetensors" --device cuda 2>/dev/null >> "$out/verify.log" || { status=1; echo "FAILED verify $k $m" >> "$out/summary.txt"; }
    tail -1 "$out/verify.log" | sed "s/^/$k $m: /" >> "$out/summary.txt"
  done
done
# The acceptance command for greedy generation, on CUDA, against the fixtures' transformers ids.
python3 - "$cli" "$out" <<'PY' || status=1
import json, struct, subprocess, sys, glob, os
cli, out = sys.argv[1], sys.argv[2]
def read(path):
    b = open(path, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: struct.unpack(f'<{(v["data_offsets"][1]-v["data_offsets"][0])//8}q', b[8+n+v["data_offsets"][0]:8+n+v["data_offsets"][1]])
            for k, v in h.items() if k != '__metadata__' and v['dtype'] == 'I64'}
ok = True
with open(os.path.join(out, 'greedy_cuda.txt'), 'w') as log:
    for ref in sorted(glob.glob('tests/fixtures/*/reference.safetensors')):
        m = ref.split('/')[-2]; t = read(ref)
        for k in t:
            if not k.endswith('.greedy_ids'): continue
            c = k.split('.')[0]; prompt = t[c + '.prompt_ids']; want = t[k][len(prompt):]
            cmd = [cli, 'generate', '--model', f'/tmp/x/onnx/{m}', '--prompt-ids', ','.join(map(str, prompt)), '--greedy',
                   '--max-new-tokens', str(len(want)), '--print-ids', '--device', 'cuda']
            r = subprocess.run(cmd, capture_output=True, text=True)
            r.stderr = '\n'.join(l for l in r.stderr.splitlines() if 'onnxruntime' not in l)  # drop ORT's placement warnings
            got = tuple(int(x) for x in r.stdout.strip().splitlines()[-1].split()) if r.returncode == 0 else ()
            same = got == tuple(want); ok &= same
            log.write(f"$ {' '.join(cmd)}\n{r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ''}\n{r.stderr.strip()}\n"
                      f"{m}.{c}: {'EQUAL' if same else 'DIFFERENT'} to transformers {list(want)}\n\n")
sys.exit(0 if ok else 1)
PY
echo "status $status" >> "$out/summary.txt"
exit $status
