"""Turn a pytest-benchmark JSON into a Markdown table and PNG plots under ``bench/results/<device>/``.

    pytest bench/ --benchmark-json=bench.json
    python bench/report.py bench.json            # writes bench/results/<device>/README.md and *.png

Benchmarks are grouped by test function and parameters other than the implementation (the ``impl`` or
``name`` parameter); within a group every implementation's median time is compared with the reference
(:data:`REFERENCES`), and each of ours (:data:`OURS`) with the fastest other implementation that ran
natively (a reference, torch.compile or a published kernel; interpreted runs excluded). Throughput comes from the
``bytes`` and ``flops`` each benchmark states in ``extra_info``; on CUDA the fraction of the measured
device limits (``machine_info["device_limits"]``) is shown too.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from lambdaskip.common import atomic_write

IMPL_KEYS = ("impl", "name")
OURS = ("triton", "extension", "direct-extension", "lambdaskip", "fast")
REFERENCES = ("reference", "eager", "naive", "direct-reference")


def _group_key(bench: dict) -> tuple[str, str]:
    params = {k: v for k, v in (bench.get("params") or {}).items() if k not in IMPL_KEYS}
    name = bench["name"].split("[")[0]
    return name, ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def _impl(bench: dict) -> str:
    params = bench.get("params") or {}
    for key in IMPL_KEYS:
        if params.get(key):
            return str(params[key])
    return str(bench.get("extra_info", {}).get("impl") or bench["name"])


def _interpreted(bench: dict) -> bool:
    return bool(bench.get("extra_info", {}).get("interpreted")) or "interpret" in _impl(bench)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "device"


def summarize(data: dict) -> list[dict]:
    """One row per benchmark: group, impl, median seconds, rates and ratios."""
    limits = data.get("machine_info", {}).get("device_limits") or {}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for bench in data.get("benchmarks", []):
        groups[_group_key(bench)].append(bench)
    rows = []
    for (name, params), benches in sorted(groups.items()):
        medians = {_impl(b): b["stats"]["median"] for b in benches}
        reference = next((medians[r] for r in REFERENCES if r in medians), None)
        others = [b["stats"]["median"] for b in benches if _impl(b) not in OURS and not _interpreted(b)]
        for bench in benches:
            impl, seconds = _impl(bench), bench["stats"]["median"]
            info = bench.get("extra_info", {})
            row = {"benchmark": name, "params": params, "impl": impl, "median_ms": seconds * 1e3,
                   "speedup_vs_reference": reference / seconds if reference else None,
                   "speedup_vs_best_other": min(others) / seconds if impl in OURS and others else None}
            if info.get("bytes"):
                row["GB/s"] = info["bytes"] / seconds / 1e9
                if limits.get("copy_bytes_per_s"):
                    row["of copy bandwidth"] = info["bytes"] / seconds / limits["copy_bytes_per_s"]
            if info.get("flops"):
                row["TFLOP/s"] = info["flops"] / seconds / 1e12
                if limits.get("bf16_flops_per_s"):
                    row["of bf16 matmul"] = info["flops"] / seconds / limits["bf16_flops_per_s"]
            if _interpreted(bench) and "interpret" not in impl:
                row["impl"] += " (interpreted)"
            rows.append(row)
    return rows


def markdown(rows: list[dict], machine: dict, commit: dict) -> str:
    columns = ["benchmark", "params", "impl", "median_ms", "speedup_vs_reference", "speedup_vs_best_other", "GB/s",
               "TFLOP/s",
               "of copy bandwidth", "of bf16 matmul"]
    columns = [c for c in columns if any(c in r and r[c] is not None for r in rows)]

    def cell(value):
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    lines = [f"# Benchmarks on {machine.get('device', 'unknown device')}", "",
             f"torch {machine.get('torch')} ({machine.get('torch_threads', '?')} CPU threads), "
             f"triton {machine.get('triton')}, python {machine.get('python_version')}, "
             f"{machine.get('cpu', {}).get('brand_raw', '')}, commit {commit.get('id', '?')[:10]}, "
             f"{commit.get('time', '')}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per benchmark function: speed-up over the reference for each implementation and size."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'lambdaskip[plot]')")
        return []
    written = []
    by_bench: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["speedup_vs_reference"]:
            by_bench[row["benchmark"]].append(row)
    for bench, items in by_bench.items():
        params = sorted({r["params"] for r in items})
        impls = sorted({r["impl"] for r in items})
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(params)), 4))
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            values = [next((r["speedup_vs_reference"] for r in items if r["impl"] == impl and r["params"] == p), 0)
                      for p in params]
            ax.bar([j + i * width for j in range(len(params))], values, width, label=impl)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(params))], params, rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("speed-up over reference")
        ax.set_yscale("log")
        ax.set_title(bench)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{_slug(bench)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="the file written by pytest --benchmark-json")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/<device>/")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    machine = data.get("machine_info", {})
    out_dir = args.out or Path(__file__).parent / "results" / _slug(machine.get("device", "unknown"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(data)
    atomic_write(out_dir / "README.md", markdown(rows, machine, data.get("commit_info", {})).encode())
    atomic_write(out_dir / "benchmark.json", json.dumps(data, indent=1).encode())
    plots = plot(rows, out_dir)
    print(f"wrote {out_dir / 'README.md'} ({len(rows)} rows) and {len(plots)} plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
