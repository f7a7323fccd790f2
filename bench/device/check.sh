#!/usr/bin/env bash
# Issue 12's GPU checks as one prepared run on a lent machine (the `device` tool), under the
# 10-minute limit of one call: the joint training step (bench/train_step.py: bf16 autocast +
# channels_last, eager, then torch.compile with its compile time) at the demo scale and at
# 256x256 with the paper's widths, and whole-volume inference (bench/inference.py) on a
# demo-size and an MM-WHS-size CT. Each bench writes its own file, so a run cut short keeps
# what finished. Results and logs go to $OUT, which the tool brings back.
#
#   bash bench/device/wheels.sh                      # here, once: .whl/ (pydantic, nibabel)
#   device run: command "bash bench/device/check.sh", carry [".whl"], timeout_s 480
# (at most 7 min 20 s of benches: with a machine's start, about 9 of a session's 15 device
# minutes, which leaves a short rerun of one bench)
#
# Locally, to try the script itself (no wheels, no compile):
#   WHEELS=none COMPILE=0 PY=.venv/bin/python DEVICE=cpu SCALES=demo ITERS=2 bash bench/device/check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sasan-device}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SCALES=${SCALES:-demo paper}
ITERS=${ITERS:-10}
WHEELS=${WHEELS:-.whl}
COMPILE=${COMPILE:-1}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{ nvidia-smi 2>/dev/null; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

bench() {   # NAME SECONDS COMMAND...: one bench, its log in $OUT/NAME.log
  local name=$1 seconds=$2; shift 2
  echo "== $name (at most ${seconds} s)"
  timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 8 "$OUT/$name.log"
  echo "== $name: exit $rc"
}
# shellcheck disable=SC2086  # SCALES is a list
bench train_step_eager 120 "$PY" bench/train_step.py --device "$DEVICE" --scales $SCALES --iters "$ITERS" \
  --out "$OUT/train_step_${DEVICE}.json"
bench inference 100 "$PY" bench/inference.py --device "$DEVICE" --scales $SCALES --repeats 2 --no-cli \
  --work /tmp/sasan-inference --out "$OUT/inference_${DEVICE}.json"
[ "$COMPILE" = 1 ] && for scale in $SCALES; do        # compiled: eager again beside it, so each file holds its own baseline
  bench "train_step_compiled_$scale" 110 "$PY" bench/train_step.py --device "$DEVICE" --scales "$scale" \
    --iters "$ITERS" --compile --out "$OUT/train_step_${DEVICE}_compiled_$scale.json"
done
ls -l "$OUT"
