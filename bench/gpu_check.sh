#!/usr/bin/env bash
# One-GPU check of hetpure (issue 24), under 10 minutes: so that a lent GPU is used well the first time.
#
#   bench/gpu_check.sh [--dry-run] [OUTPUT_DIR]
#
# Steps (each with its own time cap; a failed or timed-out step is reported and the others still run):
#   1. eval-surrogate  tiny CUDA evaluation, PGD-EOT through the S = 10 surrogate (hetpure evaluate)
#   2. eval-exact      the same through the defence's own sampler (checkpointed exact gradient)
#   3. checks          device checks of the GPU-readiness fixes (bench/gpu_checks.py)
#   4. speed           bench/speed.py --device cuda (hetpure vs the official loop, floors, peak CUDA memory)
#   5. flags           bench/flags.py --device cuda --no-compile (channels_last, autocast bf16/fp16)
#   6. flags-backend   the same with --cudnn-benchmark --tf32
#   7. flags-compile   bench/flags.py --device cuda --compile-only (compile, CUDA graphs; minutes of compiling)
# Tables go to OUTPUT_DIR (default $OUT if set, else /tmp/gpu_check): one .md per step and summary.md.
# Models and data come from ../shared or $HETPURE_SHARED (data/cifar10, models/ddpm-cifar10-tiny,
# models/resnet20-cifar10/model.safetensors).
#
# --dry-run runs the same steps on the CPU at the tiniest settings (about a minute on 2 cores): it checks
# the script, the configs and every code path that does not need CUDA.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
DRY=0
DIR=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (use --dry-run, or an output folder)" >&2; exit 2 ;;
    *) DIR="$arg" ;;
  esac
done
DIR="${DIR:-${OUT:-/tmp/gpu_check}}"
SHARED="${HETPURE_SHARED:-$REPO/../shared}"
case "$SHARED" in /*) ;; *) SHARED="$REPO/$SHARED" ;; esac
for need in data/cifar10 models/ddpm-cifar10-tiny models/resnet20-cifar10/model.safetensors; do
  if [ ! -e "$SHARED/$need" ]; then
    echo "gpu_check.sh: $SHARED/$need is missing; set HETPURE_SHARED to the shared folder" >&2
    exit 2
  fi
done
export HETPURE_SHARED="$(cd "$SHARED" && pwd)"
PY="${PYTHON:-python}"

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  N=2; BATCH=2; DDIM=20; RUNS=2; STEPS=1; EOT=1; MAXB=32; N_EXACT=2; BATCH_EXACT=2; STEPS_EXACT=1; EOT_EXACT=1
  SPEED_ARGS=(--batches 1 --runs 2 --ddim-steps 20 --eot 1 --attack-batch 1 --repeats 1)
  FLAGS_ARGS=(--batch 2 --repeats 1)
  COMPILE=0  # compiling on a CPU takes minutes and needs a C++ toolchain: the dry run leaves it out
  CAP_EVAL=600; CAP_CHECKS=300; CAP_SPEED=600; CAP_FLAGS=300; CAP_BACKEND=300; CAP_COMPILE=0
else
  DEVICE=cuda
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: CUDA is not available here; run with --dry-run for the CPU-side check" >&2
    exit 2
  fi
  N=32; BATCH=16; DDIM=100; RUNS=8; STEPS=10; EOT=4; MAXB=128; N_EXACT=16; BATCH_EXACT=8; STEPS_EXACT=5; EOT_EXACT=2
  SPEED_ARGS=(--batches 1 4 32 --runs 8 --ddim-steps 100 --eot 4 --repeats 3 --max-batch 256)
  FLAGS_ARGS=(--batch 32 --repeats 3)
  COMPILE=1
  # caps add up to 585 s: the whole check stays under 10 minutes even when a step hangs
  CAP_EVAL=60; CAP_CHECKS=120; CAP_SPEED=100; CAP_FLAGS=45; CAP_BACKEND=40; CAP_COMPILE=160
fi

mkdir -p "$DIR"
rm -rf "$DIR/runs"  # a fresh evaluation every time (a run folder would otherwise resume)
cat > "$DIR/eval.yaml" <<EOF
# written by bench/gpu_check.sh: the shared CIFAR-10 DDPM + ResNet-20, heterogeneous purification
data: {name: imagefolder, root: $HETPURE_SHARED/data/cifar10, split: test, n: $N, seed: 0}
classifier: {name: cifar_resnet20, path: $HETPURE_SHARED/models/resnet20-cifar10/model.safetensors}
diffusion: {kind: diffusers, path: $HETPURE_SHARED/models/ddpm-cifar10-tiny}
defense: {method: heterogeneous, t_s: 0.1, t_l: 0.2, tau: 0.9, resample_steps: 3, ddim_steps: $DDIM, runs: $RUNS,
          max_batch: $MAXB}
attack: {name: pgd, norm: linf, eps: 0.0313725, step_size: 0.007, steps: $STEPS, eot: $EOT, gradient: surrogate,
         surrogate_ddim_steps: 10}
run: {batch_size: $BATCH, device: $DEVICE, seed: 0, worst_case_k: 1, save_images: true, progress: false}
EOF

STATUS=()
START=$(date +%s)

step() {  # step NAME CAP COMMAND...: run one step in the repository's bench folder, keep its output
  local name="$1" cap="$2"
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== $name (cap ${cap}s) =="
  (cd "$HERE" && timeout "$cap" "$@") > "$DIR/$name.log" 2>&1
  rc=$?
  grep -v '^\s*$' "$DIR/$name.log" | tail -n 40
  if [ $rc -eq 124 ]; then
    STATUS+=("| $name | TIMED OUT after ${cap}s | $name.log |")
  elif [ $rc -ne 0 ]; then
    STATUS+=("| $name | FAILED (exit $rc) | $name.log |")
  else
    STATUS+=("| $name | ok, $(( $(date +%s) - t0 )) s | $name.md |")
  fi
  # the Markdown table(s) of the step, with the line that says how they were made
  grep -E '^\||^device |^one PGD|^batch ' "$DIR/$name.log" > "$DIR/$name.md" || true
}

summarise_eval() {  # summarise_eval NAME: the run's summary.json as one table row
  "$PY" - "$DIR/runs/$1/summary.json" "$1" >> "$DIR/$1.md" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
calls, mem = s["eps_calls"], ", ".join(f"{k} {v:.0f}" for k, v in s["memory"].items())
print("| run | n | clean | robust | s/image | attack ε-calls/image | memory MB | device |")
print("|---|---|---|---|---|---|---|---|")
print(f"| {sys.argv[2]} | {s['n']} | {s['clean_accuracy']:.3f} | {s['robust_accuracy']:.3f} | "
      f"{s['seconds_per_image']:.2f} | {calls['attack_per_image']} | {mem} | {s['device']} |")
PYEOF
}

step eval-surrogate "$CAP_EVAL" "$PY" -m hetpure evaluate "$DIR/eval.yaml" --out "$DIR/runs/eval-surrogate"
[ -f "$DIR/runs/eval-surrogate/summary.json" ] && summarise_eval eval-surrogate
step eval-exact "$CAP_EVAL" "$PY" -m hetpure evaluate "$DIR/eval.yaml" --out "$DIR/runs/eval-exact" \
  --set attack.gradient=exact --set "data.n=$N_EXACT" --set "run.batch_size=$BATCH_EXACT" \
  --set "attack.steps=$STEPS_EXACT" --set "attack.eot=$EOT_EXACT"
[ -f "$DIR/runs/eval-exact/summary.json" ] && summarise_eval eval-exact
step checks "$CAP_CHECKS" "$PY" gpu_checks.py --device "$DEVICE"
step speed "$CAP_SPEED" "$PY" speed.py --device "$DEVICE" "${SPEED_ARGS[@]}"
step flags "$CAP_FLAGS" "$PY" flags.py --device "$DEVICE" "${FLAGS_ARGS[@]}" --no-compile
step flags-backend "$CAP_BACKEND" "$PY" flags.py --device "$DEVICE" "${FLAGS_ARGS[@]}" --no-compile \
  --cudnn-benchmark --tf32
if [ "$COMPILE" = 1 ]; then
  step flags-compile "$CAP_COMPILE" "$PY" flags.py --device "$DEVICE" "${FLAGS_ARGS[@]}" --compile-only
fi

{
  echo "# bench/gpu_check.sh $([ "$DRY" = 1 ] && echo "--dry-run (CPU)" || echo "(CUDA)")"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(( $(date +%s) - START )) s in all, output in $DIR"
  echo
  echo "| step | result | table |"
  echo "|---|---|---|"
  printf '%s\n' "${STATUS[@]}"
} > "$DIR/summary.md"
cat "$DIR/summary.md"
if printf '%s\n' "${STATUS[@]}" | grep -q -E 'FAILED|TIMED OUT'; then
  exit 1
fi
