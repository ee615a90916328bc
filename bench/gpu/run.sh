#!/usr/bin/env bash
# GPU tests + GPU benchmark, ON the GPU machine, from the repository root:
#
#     bash bench/gpu/run.sh
#
# (through the device tool, with carry ["bench/gpu/wheels"], after `bash bench/gpu/fetch_wheels.sh`
# here). Installs the carried Zennit/Captum wheels and relprop (editable) into the image's
# python3, runs `pytest -m gpu tests`, then bench/gpu/bench_gpu.py, which writes
# bench/results/<date>-gpu-<kind>.md (+ .json) and copies them into $OUT when it is set; the
# logs go to $OUT too (or /tmp/relprop-gpu). Finishes within RELPROP_GPU_TOTAL_S (default 520 s:
# under 9 minutes on an H100): the tests get at most RELPROP_GPU_TEST_S (240 s), the benchmark
# stops starting cases 90 s before the total and is killed at it (its report is written after
# every workload). Exit code: non-zero when the tests or a benchmark case failed.
#
# `bash bench/gpu/run.sh --dry-run` checks this script on a machine without a GPU (.venv's python,
# the GPU tests skip, the benchmark runs its --dry-run on the CPU, report in /tmp).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
unset CUPY_TF32  # TF32 only where a benchmark row asks for it
DRY=()
PY=${PYTHON:-python3}
if [[ ${1:-} == --dry-run ]]; then
    DRY=(--dry-run)
    [[ -x .venv/bin/python ]] && PY=${PYTHON:-.venv/bin/python}
fi
TOTAL_S=${RELPROP_GPU_TOTAL_S:-520}
TEST_S=${RELPROP_GPU_TEST_S:-240}
LOGDIR=${OUT:-/tmp/relprop-gpu}
mkdir -p "$LOGDIR"
START=$SECONDS
log() { printf '[run.sh +%3ds] %s\n' $((SECONDS - START)) "$*"; }

log "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
log "python: $($PY -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# 1. peers: pure-Python wheels carried from the dev machine (no index here)
SITE=/tmp/relprop-gpu-site
shopt -s nullglob
wheels=(bench/gpu/wheels/*.whl)
if ((${#wheels[@]})); then
    if $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "${wheels[@]}"; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        log "peers installed into $SITE: ${wheels[*]##*/}"
    else
        log "WARNING: installing ${wheels[*]##*/} failed"
    fi
else
    log "WARNING: no wheels in bench/gpu/wheels (run 'bash bench/gpu/fetch_wheels.sh' on the dev machine and" \
        "carry bench/gpu/wheels): peer-importing test modules and the peer cases will fail"
fi

# 2. relprop, editable (no build isolation: nothing can be downloaded here)
if $PY -c "import relprop.kernels.cpu" 2>/dev/null; then
    log "relprop already importable here"
elif $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$LOGDIR/pip-relprop.log" 2>&1; then
    log "relprop installed (pip install -e .)"
else
    # e.g. a setuptools older than pyproject.toml needs: make relprop.kernels resolve in this copy
    log "pip install -e . failed (pip-relprop.log); fallback: link relprop/kernels -> ../kernels in this copy"
    ln -sfn ../kernels relprop/kernels
fi
if ((${#DRY[@]})); then
    log "dry run: relprop's GPU kernels not imported"
elif ! $PY -c "import relprop, relprop.kernels.gpu as g; print('relprop', relprop.__version__, 'from', relprop.__file__, '| cupy', g.xp.__version__)"; then
    log "relprop (or its GPU kernels) not importable: stopping"
    exit 2
fi

# 3. GPU tests
log "GPU tests: $PY -m pytest -m gpu tests -q (at most ${TEST_S}s)"
timeout -k 10 "$TEST_S" $PY -m pytest -m gpu tests -q -p no:cacheprovider --continue-on-collection-errors \
    2>&1 | tee "$LOGDIR/gpu-tests.log"
TEST_RC=${PIPESTATUS[0]}
log "GPU tests exit code $TEST_RC$( ((TEST_RC == 124)) && echo ' (timed out)')"

# 4. GPU benchmark
LEFT=$((TOTAL_S - (SECONDS - START)))
log "benchmark: ${LEFT}s left"
export RELPROP_GPU_BENCH_COMMAND="bash bench/gpu/run.sh"
timeout -k 10 "$((LEFT > 30 ? LEFT : 30))" $PY bench/gpu/bench_gpu.py "${DRY[@]}" --budget-s "$((LEFT > 120 ? LEFT - 90 : 30))" \
    --tests-log "$LOGDIR/gpu-tests.log" --tests-rc "$TEST_RC" 2>&1 | tee "$LOGDIR/bench.log"
BENCH_RC=${PIPESTATUS[0]}
log "benchmark exit code $BENCH_RC$( ((BENCH_RC == 124)) && echo ' (timed out: the report holds the workloads done)')"
log "done"
((TEST_RC == 0 && BENCH_RC == 0)) || exit 1
