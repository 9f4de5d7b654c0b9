#!/usr/bin/env bash
# The whole GPU check in one device call: install lambdaskip into the machine's own torch (no downloads:
# it has torch, triton, pytest, pytest-benchmark, hypothesis, ninja), run the GPU tests and the kernel
# tests on CUDA (every autotune config executed), then the benchmarks, and write everything under $OUT.
#
#   bash bench/gpu_check.sh                                   # on the device machine, from the repository root
#   LAMBDASKIP_GPU_CHECK_REHEARSAL=1 bash bench/gpu_check.sh  # every step on CPU (interpreter): what CI runs
#   then: python bench/report.py <OUT>/bench.json --out bench/results/<device>/   (here, to commit)
#
# Exits non-zero when any step, test or benchmark fails; it still runs the later steps, so one call brings
# back everything it can. LAMBDASKIP_GPU_CHECK_PYTEST_ARGS adds flags to every pytest call; PYTHON picks the
# interpreter (default python3). $OUT gets at most 7 files: device.txt, install.log, tests.log, bench.json,
# bench.log, report.tgz, summary.txt (the device tool returns at most 8).
#
# Budget on one H100/H200 (an estimate: no GPU has run it yet; aim ≤ 6 min, and the step limits below add
# up to 9.5 min, inside the device tool's 10-minute call). Install: the S4D extension built with nvcc, two
# .cpp files and one .cu (~1.5 min). Tests: dominated by Triton's first-call compiles, one per kernel
# specialisation and autotune config: about 150 (every config of the 4 autotuned SSD kernels per launch
# key, 2 λ-norm kernels per block size × dtype × flags), counted from the launches these tests make under
# the interpreter; at the ~1.6 s of CPU per compile measured for the ahead-of-time sm_90 compile here
# (bench/sm90_report.py, a slow shared core; a GPU host's is faster) that is ≤ 4 min, GPU work seconds.
# Benchmarks: their own sizes' compiles plus ≤ 0.5 s of timing per case (~1.5 min). The SSD kernel tests
# at small sizes (tests/test_ssd_triton.py, ~100 more compiles) are left to `-m gpu` and CI's interpreter.
# Limits per step: install 150 + 30 s, tests 150 + 100 s, benchmarks 120 s, report 20 s.
#
# Published baselines are not on the device machine and it has no network: put their wheels in .whl/
# first (git-ignored via .git/info/exclude; never committed), e.g. here
#   pip download --no-deps -d .whl liger-kernel fla-core
#   MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip wheel --no-deps --no-build-isolation -w .whl mamba_ssm
# and they are installed before the benchmarks; the benchmarks skip a missing one with the reason.
set -euo pipefail
OUT=${OUT:-/tmp/lambdaskip-gpu}
PY=${PYTHON:-python3}
REHEARSAL=${LAMBDASKIP_GPU_CHECK_REHEARSAL:-0}
read -r -a EXTRA <<< "${LAMBDASKIP_GPU_CHECK_PYTEST_ARGS:-}"
KERNEL_TESTS=(tests/test_autotune_configs.py tests/test_lambda_norm.py)  # small sizes, on CUDA there
mkdir -p "$OUT"
status=0

step() {  # step NAME COMMAND...: run it, record ok or FAILED with its time, go on either way
    local name=$1 start=$SECONDS
    shift
    if "$@"; then
        echo "$name: ok ($((SECONDS - start)) s)" | tee -a "$OUT/summary.txt"
    else
        echo "$name: FAILED ($((SECONDS - start)) s)" | tee -a "$OUT/summary.txt"
        status=1
    fi
}

if [[ $REHEARSAL == 1 ]]; then
    # CPU rehearsal: the same steps and flags; tests are only collected (they run in CI's own suite), the
    # benchmarks run under the interpreter, pip only resolves the install.
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    INSTALL=(--dry-run)
    TEST_MODE=(--collect-only)
    # one round each, without the torch.compile baselines (minutes of Inductor on CPU; CI's suite runs them)
    BENCH_TIME=(--benchmark-max-time=0 --benchmark-min-rounds=1 --benchmark-warmup=off -k "not compiled")
    SLOW=4  # the step limits are sized for the GPU machine; a shared 2-core CI runner interprets kernels
else
    SLOW=1
    INSTALL=()
    TEST_MODE=()
    BENCH_TIME=(--benchmark-max-time=0.5)
fi
: > "$OUT/summary.txt"
{
    if [[ $REHEARSAL == 1 ]]; then echo "CPU rehearsal (TRITON_INTERPRET=1)"; else
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; fi
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    date -u
} > "$OUT/device.txt" 2>&1

install() {
    timeout $((150 * SLOW)) "$PY" -m pip install --no-deps --no-build-isolation "${INSTALL[@]}" -e . > "$OUT/install.log" 2>&1 &&
        if compgen -G ".whl/*.whl" > /dev/null; then
            timeout $((30 * SLOW)) "$PY" -m pip install --no-deps "${INSTALL[@]}" .whl/*.whl >> "$OUT/install.log" 2>&1
        fi &&
        "$PY" -c "import lambdaskip; print(lambdaskip.extension_status())" >> "$OUT/device.txt" 2>&1
}

tests() {  # the gpu-marked tests, then the kernel tests at small sizes on CUDA (every autotune config)
    local rc=0
    timeout $((150 * SLOW)) "$PY" -m pytest tests -m gpu -q -p no:cacheprovider -rfE "${TEST_MODE[@]}" "${EXTRA[@]}" || rc=1
    timeout $((100 * SLOW)) "$PY" -m pytest "${KERNEL_TESTS[@]}" -m "not gpu and not slow" -q -p no:cacheprovider -rfE \
        "${TEST_MODE[@]}" "${EXTRA[@]}" || rc=1
    return $rc
}

benchmarks() {
    timeout $((120 * SLOW)) "$PY" -m pytest bench -q -p no:cacheprovider --benchmark-json="$OUT/bench.json" "${BENCH_TIME[@]}" \
        "${EXTRA[@]}"
}

report() {
    timeout $((20 * SLOW)) "$PY" bench/report.py "$OUT/bench.json" --out "$OUT/report" &&
        tar czf "$OUT/report.tgz" -C "$OUT" report && rm -r "$OUT/report"
}

step install install
step tests tests > "$OUT/tests.log" 2>&1
tail -n 3 "$OUT/tests.log"
step benchmarks benchmarks > "$OUT/bench.log" 2>&1
tail -n 3 "$OUT/bench.log"
step report report
cat "$OUT/summary.txt"
exit $status
