#!/usr/bin/env bash
# The whole GPU check in one device call: install lambdaskip into the machine's own torch (no downloads:
# it has torch, triton, pytest-benchmark, hypothesis, ninja), run the `gpu` tests, then the benchmarks,
# and write everything under $OUT (kept to a few files: the device tool returns at most 8).
#
#   bash bench/gpu_check.sh            # on the device machine, from the repository root
#   then: python bench/report.py <OUT>/bench.json --out bench/results/<device>/   (here, to commit)
#
# Published baselines are not on the device machine and it has no network: put their wheels in .whl/
# first (git-ignored via .git/info/exclude; never committed), e.g. here
#   pip download --no-deps -d .whl liger-kernel fla-core
#   MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip wheel --no-deps --no-build-isolation -w .whl mamba_ssm
# and they are installed before the benchmarks; the benchmarks skip a missing one with the reason.
set -uo pipefail
OUT=${OUT:-/tmp/lambdaskip-gpu}
mkdir -p "$OUT"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    date -u
} > "$OUT/device.txt" 2>&1
python3 -m pip install --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { tail "$OUT/install.log"; exit 1; }
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install --no-deps .whl/*.whl >> "$OUT/install.log" 2>&1 || echo "baseline wheels: install failed (see install.log)"
fi
python3 -c "import lambdaskip; print(lambdaskip.extension_status())" >> "$OUT/device.txt" 2>&1
python3 -m pytest tests -m gpu -q -p no:cacheprovider --timeout=300 -rfE > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests: $(tail -1 "$OUT/gpu_tests.log")"
python3 -m pytest bench -q -p no:cacheprovider --benchmark-json="$OUT/bench.json" --benchmark-max-time=0.5 \
    > "$OUT/bench.log" 2>&1
echo "benchmarks: $(tail -1 "$OUT/bench.log")"
python3 bench/report.py "$OUT/bench.json" --out "$OUT/report" && tar czf "$OUT/report.tgz" -C "$OUT" report && rm -r "$OUT/report"
