#!/usr/bin/env bash
# The GPU path in one short, prepared run — for a session lent a GPU machine (`run` in the device tool): training
# throughput of the gpu UNet in bf16 autocast, compiled, beside diffusers (bench/train.py), the compact CLIP's
# embedding throughput beside a plain open_clip loop (bench/embed.py), and, with DEMO=1, the wall time of
# `mithridate demo --preset=gpu` (long: its training runs are sized for a GPU hour). Each part has its own time limit
# and one failing part does not stop the others. Results: $OUT (default bench-gpu/), one log per part + gpu.txt.
#
#   bash bench/gpu.sh                  # train + embed, ~5 minutes on one GPU
#   DEMO=1 LIMIT=3000 bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-gpu}
LIMIT=${LIMIT:-240}   # seconds per part
mkdir -p "$OUT"
export NO_ALBUMENTATIONS_UPDATE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c \
  "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported())"
} > "$OUT/gpu.txt" 2>&1
part() {  # part <name> <command…>: run it under the limit, keep its log and exit status
  local name=$1; shift
  local t0=$SECONDS
  timeout "$LIMIT" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}
part train python bench/train.py --preset=gpu --device=cuda --batch=256 --compile --out="$OUT/train"
part train-eager python bench/train.py --preset=gpu --device=cuda --batch=256 --out="$OUT/train-eager"
part embed python bench/embed.py --device=cuda --batch_size=1024 --out="$OUT/embed"
if [ "${DEMO:-0}" = 1 ]; then
  part demo mithridate demo --preset=gpu --out="$OUT/demo"
fi
cat "$OUT/summary.txt"
