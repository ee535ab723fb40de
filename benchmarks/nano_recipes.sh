#!/bin/bash
# Compare Nano training recipes side by side on one GPU, on the same cached data, each scored on
# 100 validation shapes (never on the test shapes, which only report the chosen model's figures).
# Every variant is a name and the training flags it adds:
#
#   bash benchmarks/nano_recipes.sh OUT_DIR "base=" "seed1=--seed 1" "wide=--config {\"hidden_dim\":192}"
#
# Environment: PYTHON (python3, with the backend's packages), STEPS (each run's length; default:
# sized by a short probe so the runs train for about TRAIN_SECONDS, 230 by default), DEVICE
# (cuda), CACHE (/tmp/nano-cache), THREADS (CPU threads per run, 2). Writes OUT_DIR/NAME.log per
# variant and OUT_DIR/summary.txt. Flags are split on spaces, so a JSON value must have none.
# Runs shorter than the real 20000 steps rank recipes; they don't reproduce the shipped figures.
set -u
if [ $# -lt 2 ] || [ "$1" = "--help" ] || [ "$1" = "-h" ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
out=$1; shift
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
cache=${CACHE:-/tmp/nano-cache}
threads=${THREADS:-2}
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
mkdir -p "$out" "$out/weights"
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started )) s"; }

"$python" -m backend.pipelines.nano.train --out "$out/weights/data" --steps 0 --calibration-shapes 0 \
  --threads "$(nproc)" --cache-dir "$cache" | tail -n 1
echo "data ready after $(elapsed)"

train() {  # train NAME STEPS FLAGS...: one run, its weights and record under $out/weights/NAME
  local name=$1 steps=$2; shift 2
  "$python" -m backend.pipelines.nano.train --out "$out/weights/$name" --cache-dir "$cache" --device "$device" \
    --threads "$threads" --steps "$steps" --checkpoint-every 1000000 --validation-shapes 2 "$@"
}

steps=${STEPS:-}
if [ -z "$steps" ]; then
  # A few hundred steps of every variant at once measure the speed they share the device at.
  for variant in "$@"; do
    name=${variant%%=*}
    # shellcheck disable=SC2086
    train "probe-$name" 300 --calibration-shapes 0 ${variant#*=} > "$out/weights/probe-$name.log" 2>&1 &
  done
  wait
  slowest=$(grep -h "step 300/300 " "$out"/weights/probe-*.log | sed -E 's/.*\(([0-9.]+) steps\/s\).*/\1/' | sort -g | head -n 1)
  steps=$("$python" -c "print(max(1000, int(${slowest:-0} * ${TRAIN_SECONDS:-230} / 1000) * 1000))")
  echo "probe: the slowest variant made $slowest steps/s beside the others -> $steps steps each ($(elapsed))"
fi

for variant in "$@"; do
  name=${variant%%=*}
  # shellcheck disable=SC2086
  ( train "$name" "$steps" ${variant#*=} && "$python" -m backend.pipelines.nano.evaluate \
      --weights "$out/weights/$name/nano.safetensors" --split validation --shapes 100 --timing-runs 0 --threads "$threads" ) > "$out/$name.log" 2>&1 &
done
wait
echo "all runs scored after $(elapsed)"

for variant in "$@"; do
  name=${variant%%=*}
  log="$out/$name.log"
  echo "== $name (${variant#*=}): $(grep -E 'surface level' "$log" | sed -E 's/^\[ *[0-9]+ s\] //')"
  grep -E "step $steps/$steps |mean IoU|^\| |Error" "$log" | sed -E 's/^\[ *[0-9]+ s\] //'
done | tee "$out/summary.txt"
