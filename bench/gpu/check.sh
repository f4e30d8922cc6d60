#!/usr/bin/env bash
# The GPU checks of xrayfm in one run, for a session lent a GPU machine (the workplace's device tool) or anyone
# with a CUDA GPU: the server beside its raw engine (bench/serve_latency.py), --compile against eager
# (bench/serve_compile.py), then MIM, Adam and Foundation X training throughput, each on the GPU.
#
#   here, once:     make gpu-wheels            (the packages the lent machine lacks, as wheels in .whl/)
#   on the GPU:     bash bench/gpu/check.sh    (device tool: carry .whl, OUT set by the tool)
#   smoke, on CPU:  QUICK=1 DEVICE=cpu PYTHON=.venv/bin/python bash bench/gpu/check.sh
#   the plan only:  DRY=1 bash bench/gpu/check.sh  (names each command instead of running it)
#
# Steps run in order of priority while BUDGET seconds last (default 420: a device call's 10 minutes less the
# machine's start and a margin); each gets at most its own limit and what is left, so a machine lent for a few
# minutes still returns the first results. Each step writes its JSON to $OUT
# (default bench/results/gpu_check), the log of all of them goes to $OUT/gpu_check.log, and a step that fails
# or runs out of time is named there without stopping the next. Copy the JSONs to bench/results/ and
# regenerate the README tables (python bench/readme_tables.py) after checking them.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench/results/gpu_check}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-420}
QUICK=${QUICK:-0}
DRY=${DRY:-0}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
export PYTHONUNBUFFERED=1
START=$(date +%s)
: >"$LOG"

say() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# step NAME LIMIT COMMAND...: run COMMAND with at most LIMIT seconds (less when the budget is nearly spent)
step() {
    local name=$1 limit=$2 left
    shift 2
    left=$((BUDGET - ($(date +%s) - START)))
    if ((left < 20)); then
        say "$name: skipped, the budget of ${BUDGET}s is spent"
        return
    fi
    ((limit > left)) && limit=$left
    if [ "$DRY" = 1 ]; then
        say "$name: would run: $*"
        return
    fi
    say "$name: start (at most ${limit}s)"
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    if ((rc == 0)); then say "$name: done"; elif ((rc == 124 || rc == 137)); then say "$name: out of time after ${limit}s"; else say "$name: FAILED (exit $rc)"; fi
}

if ! "$PY" -c "import xrayfm" 2>/dev/null; then # a lent machine: its own Python with PyTorch, plus the carried wheels
    [ -d .whl ] || { say "xrayfm is not installed for $PY and there is no .whl/: run make gpu-wheels and carry .whl"; exit 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >>"$LOG" 2>&1 || { say "installing the carried wheels failed"; exit 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site . \
        >>"$LOG" 2>&1 || { say "installing xrayfm failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" - >>"$LOG" 2>&1 <<'EOF'
import platform, torch, xrayfm
print("python", platform.python_version(), "torch", torch.__version__, "xrayfm", xrayfm.__version__, "from", xrayfm.__file__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi -L >>"$LOG" 2>&1
say "environment recorded (device $DEVICE, budget ${BUDGET}s, quick $QUICK)"

if [ "$QUICK" = 1 ]; then # tiny sizes: checks the steps run, measures nothing
    serve=(--size 32 --image 64 --requests 4 --max-batch 2)
    step serve_latency 240 "$PY" bench/serve_latency.py --device "$DEVICE" --archs eva_x_tiny_patch16 --backends torch \
        --precisions fp32 --clients 1,2 --rounds 1 --repeats 2 "${serve[@]}" --out "$OUT/serve_latency.json"
    step serve_compile 300 "$PY" bench/serve_compile.py --device "$DEVICE" --archs eva_x_tiny_patch16 --precisions fp32 \
        --rounds 1 --clients 2 "${serve[@]}" --out "$OUT/serve_compile.json"
    step mim_throughput 120 "$PY" bench/mim_throughput.py --batch 1 --steps 1 --out "$OUT/mim_throughput.json"
    step adam_throughput 120 "$PY" bench/adam_throughput.py --device "$DEVICE" --archs resnet18 --sizes 32 --batches 2 \
        --warmup 0 --steps 1 --queue-size 16 --out "$OUT/adam_throughput.json"
    step multitask_units 120 "$PY" bench/multitask_units.py --device "$DEVICE" --quick --out "$OUT/multitask_units.json"
else
    # one model a step: a step stopped at its limit writes nothing, so Ti's results must not wait for S's
    step serve_latency_ti 150 "$PY" bench/serve_latency.py --device "$DEVICE" --archs eva_x_tiny_patch16 \
        --backends torch --precisions fp32,bf16 --clients 1,16 --rounds 2 --out "$OUT/serve_latency_ti_gpu.json"
    step serve_compile 120 "$PY" bench/serve_compile.py --device "$DEVICE" --archs eva_x_tiny_patch16 \
        --precisions fp32,bf16 --rounds 1 --out "$OUT/serve_compile_gpu.json"
    step serve_latency_s 120 "$PY" bench/serve_latency.py --device "$DEVICE" --archs eva_x_small_patch16 \
        --backends torch --precisions fp32,bf16 --clients 1,16 --rounds 1 --out "$OUT/serve_latency_s_gpu.json"
    step mim_throughput 60 "$PY" bench/mim_throughput.py --batch 64 --steps 5 --out "$OUT/mim_throughput_gpu.json"
    step adam_throughput 60 "$PY" bench/adam_throughput.py --device "$DEVICE" --archs resnet50 --sizes 224 \
        --batches 64,256 --out "$OUT/adam_throughput_gpu.json"
    step multitask_units 60 "$PY" bench/multitask_units.py --device "$DEVICE" --out "$OUT/multitask_units_gpu.json"
fi
say "finished: $(ls "$OUT" | tr '\n' ' ')"
