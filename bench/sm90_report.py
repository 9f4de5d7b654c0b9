"""Static sm_90 report: registers, spills, shared memory and occupancy of every Triton kernel × config.

    python bench/sm90_report.py            # rewrites bench/results/sm90-static/README.md (no GPU needed)

How: the forward and backward passes of every op run once under Triton's CPU interpreter at realistic
sizes while the interpreter records each launch (argument dtypes, constexprs); a subprocess without the
interpreter then compiles every recorded kernel ahead of time for sm_90 (H100/H200) with ``triton.compile``,
once per GPU autotuning config, with ``TRITON_DUMP_PTXAS_LOG=1`` so that ptxas's verbose output
(registers, stack, spill stores and loads) is printed, captured and parsed. Shared memory is the compiled
kernel's metadata; occupancy follows from the sm_90 limits below. Kernels are found generically: every
``triton`` JITFunction or Autotuner defined in a ``lambdaskip.kernels`` module whose name ends in
``_kernel``; the recording must have launched each of them.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import pkgutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import torch  # noqa: E402

REPORT = Path(__file__).resolve().parent / "results" / "sm90-static" / "README.md"
POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64",
                 torch.int32: "*i32", torch.int64: "*i64"}
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
# sm_90 (H100/H200) per-SM limits, from NVIDIA's CUDA occupancy calculator / Hopper tuning guide.
SM90 = {"registers": 65536, "register_unit": 256, "warps": 64, "blocks": 32, "shared": 233472,
        "shared_per_block": 232448, "shared_reserved": 1024, "shared_unit": 128}


def _argument_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return POINTER_TYPES[value.dtype]
    if value is None:
        return "constexpr"
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if abs(value) < 2**31 else "i64"
    return "fp32"


@contextlib.contextmanager
def record_launches():
    """Within the block, every interpreted kernel launch is added to the yielded list as a compile spec."""
    import triton.language as tl
    import triton.runtime.interpreter as interpreter

    specs: dict[str, dict] = {}
    run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        values = {**dict(zip(self.arg_names, args)), **kwargs}
        meta = {k: ({"tl_dtype": str(v)} if isinstance(v, tl.dtype) else v)
                for k, v in kwargs.items() if k not in LAUNCH_OPTIONS}
        spec = {"module": self.fn.__module__, "name": self.fn.__name__, "meta": meta,
                "types": {name: _argument_type(values.get(name)) for name in self.arg_names},
                "num_warps": kwargs.get("num_warps", 4), "num_stages": kwargs.get("num_stages", 2)}
        specs[json.dumps(spec, sort_keys=True)] = spec
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    recorded: list[dict] = []
    interpreter.InterpretedFunction.run = recording_run
    try:
        yield recorded
    finally:
        interpreter.InterpretedFunction.run = run
        recorded.extend(specs.values())


def package_kernels() -> set[tuple[str, str]]:
    """(module, name) of every Triton kernel (a ``triton.runtime`` object named ``*_kernel``: JITFunction,
    its interpreted twin, Autotuner, Heuristics) defined in a module of lambdaskip.kernels."""
    import lambdaskip.kernels as package

    found = set()
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            fn = value
            while type(fn).__module__.startswith("triton.runtime") and hasattr(fn, "fn"):
                fn = fn.fn
            if name.endswith("_kernel") and fn is not value and getattr(fn, "__module__", None) == module.__name__:
                found.add((module.__name__, name))
    return found


def run_every_kernel() -> None:
    """Forward and backward of every op at realistic sizes: every λ-norm block size the launcher can pick
    (fused rows up to MAX_FUSED_D, the looped kernel past it), every norm, the SSD at Mamba-2 sizes and its
    decode step."""
    from lambdaskip.kernels.lambda_norm import MAX_FUSED_D
    from lambdaskip.ops import lambda_norm, ssd_scan, ssd_step

    g = torch.Generator().manual_seed(0)
    lam_cases = [(d, "layernorm") for d in (2**k for k in range(4, MAX_FUSED_D.bit_length()))]
    lam_cases += [(3 * MAX_FUSED_D // 2, "layernorm"), (1024, "rmsnorm"), (1024, "l2"), (3 * MAX_FUSED_D // 2, "l2")]
    # one λ, and one λ per batch element (LAM_PER_ELEMENT) on a fused and a looped row
    lam_cases = [(d, norm, ()) for d, norm in lam_cases]
    lam_cases += [(1024, "layernorm", (2,)), (3 * MAX_FUSED_D // 2, "rmsnorm", (2,))]
    for dtype in (torch.float32, torch.bfloat16):
        for d, norm, lam_shape in lam_cases:
            x, r = (torch.randn(2, 2, d, generator=g).to(dtype).requires_grad_() for _ in range(2))
            lam = torch.full(lam_shape, 0.5, requires_grad=True)
            w = torch.ones(d, dtype=dtype, requires_grad=True)
            b = torch.zeros(d, dtype=dtype, requires_grad=True) if norm == "layernorm" else None
            out, h, _ = lambda_norm(x, r, lam, w, b, norm=norm, prenorm=True, return_mu=True, backend="triton")
            (out.float().sum() + h.float().sum()).backward()
        for chunk_size in (64, 256):  # the default chunk and the benchmark's
            x = torch.randn(1, chunk_size + 3, 2, 64, generator=g).to(dtype).requires_grad_()
            dt = torch.rand(1, chunk_size + 3, 2, generator=g).requires_grad_()
            A = (-torch.rand(2, generator=g)).requires_grad_()
            B, C = (torch.randn(1, chunk_size + 3, 1, 128, generator=g).to(dtype).requires_grad_() for _ in range(2))
            h0 = torch.randn(1, 2, 64, 128, generator=g).to(dtype).requires_grad_()
            y, final = ssd_scan(x, dt, A, B, C, chunk_size=chunk_size, initial_states=h0, return_final_states=True,
                                backend="triton")
            (y.float().sum() + final.float().sum()).backward()
            # packed sequences: the seq_idx variants of every step and the per-sequence final states
            cu_seqlens = torch.tensor([0, chunk_size // 2, chunk_size + 3])
            y, final, varlen = ssd_scan(x, dt, A, B, C, chunk_size=chunk_size, initial_states=h0, cu_seqlens=cu_seqlens,
                                        return_final_states=True, return_varlen_states=True, backend="triton")
            (y.float().sum() + final.float().sum()).backward()
        # SSD decode step: Mamba-2 sizes (headdim 64, dstate 128) and the largest dstate (256), float32 state
        for dstate in (128, 256):
            state = torch.randn(2, 2, 64, dstate, generator=g)
            x, z = (torch.randn(2, 2, 64, generator=g).to(dtype) for _ in range(2))
            B, C = (torch.randn(2, 1, dstate, generator=g).to(dtype) for _ in range(2))
            dt, A, D = torch.rand(2, 2, generator=g).to(dtype), -torch.rand(2, generator=g), torch.ones(2, 64)
            ssd_step(state, x, dt, A, B, C, D=D, z=z, dt_bias=torch.zeros(2), dt_softplus=True, dt_limit=(0.0, 1.0),
                     backend="triton")


COMPILE = '''
import concurrent.futures, contextlib, importlib, io, json, os, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def unwrap(spec):
    kernel, configs = getattr(importlib.import_module(spec["module"]), spec["name"]), [None]
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        configs = getattr(kernel, "configs", configs)
        kernel = kernel.fn
    return kernel, configs


def jobs(spec):
    for config in unwrap(spec)[1]:
        yield spec, (config.kwargs, config.num_warps, config.num_stages) if config else None


def compile_one(job):
    spec, config = job
    kernel = unwrap(spec)[0]
    constexprs = {k: getattr(tl, v["tl_dtype"].replace("bf16", "bfloat16").replace("fp", "float"))
                  if isinstance(v, dict) else v for k, v in spec["meta"].items()}
    options = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
    row = {"module": spec["module"], "name": spec["name"], "autotuned": config is not None,
           "variant": {k: v for k, v in spec["meta"].items()
                       if not isinstance(v, dict) and not (config and k in config[0])},
           "dtypes": sorted({t for t in spec["types"].values() if t.startswith("*")})}
    if config:
        constexprs.update(config[0])
        options = {"num_warps": config[1], "num_stages": config[2]}
        row["config"] = dict(config[0])
    row.update(options)
    signature = {}
    for name, param in zip(kernel.arg_names, kernel.params):
        signature[name] = "constexpr" if param.is_constexpr else spec["types"][name]
        if signature[name] == "constexpr":
            constexprs.setdefault(name, None)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            binary = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                                    options=options)
    except Exception as error:
        row["error"] = f"{type(error).__name__}: {str(error)[:400]}"
        return row
    text = log.getvalue()
    regs = re.search(r"Used (\\d+) registers", text)
    frame = re.search(r"(\\d+) bytes stack frame, (\\d+) bytes spill stores, (\\d+) bytes spill loads", text)
    if not regs or not frame:
        row["error"] = "no ptxas verbose output (TRITON_DUMP_PTXAS_LOG unsupported?): " + text[-300:]
        return row
    row.update(registers=int(regs.group(1)), stack=int(frame.group(1)), spill_stores=int(frame.group(2)),
               spill_loads=int(frame.group(3)), shared=binary.metadata.shared)
    return row


if __name__ == "__main__":
    work = [job for spec in json.load(open(sys.argv[1])) for job in jobs(spec)]
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
        rows = list(pool.map(compile_one, work))
    json.dump(rows, open(sys.argv[2], "w"))
'''


def compile_specs(specs: list[dict], workdir: Path) -> list[dict]:
    """Compile every spec × GPU config for sm_90 in a subprocess (no interpreter); one row per compile."""
    (workdir / "specs.json").write_text(json.dumps(specs))
    (workdir / "compile_sm90.py").write_text(COMPILE)
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(workdir / "cache"),
           "TRITON_DEFAULT_FP_FUSION": "1", "TRITON_DUMP_PTXAS_LOG": "1"}
    done = subprocess.run([sys.executable, str(workdir / "compile_sm90.py"), str(workdir / "specs.json"),
                           str(workdir / "rows.json")], capture_output=True, text=True, env=env, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"sm_90 compile failed:\n{done.stderr[-3000:]}")
    return json.loads((workdir / "rows.json").read_text())


def occupancy(registers: int, shared: int, num_warps: int) -> tuple[int, float]:
    """(resident blocks per SM, fraction of the 64 warp slots used) on sm_90."""
    per_warp = math.ceil(registers * 32 / SM90["register_unit"]) * SM90["register_unit"]
    by_registers = (SM90["registers"] // per_warp) // num_warps
    by_shared = SM90["blocks"]
    if shared:
        per_block = math.ceil(shared / SM90["shared_unit"]) * SM90["shared_unit"] + SM90["shared_reserved"]
        by_shared = SM90["shared"] // per_block
    blocks = min(SM90["blocks"], SM90["warps"] // num_warps, by_registers, by_shared)
    return blocks, blocks * num_warps / SM90["warps"]


def problems(rows: list[dict]) -> list[str]:
    """Every row that a launch may pick and that fails to compile, spills, or exceeds a block's shared memory."""
    bad = []
    for row in rows:
        where = f"{row['name']} {row.get('config', '')} {row['variant']} warps={row['num_warps']}"
        if "error" in row:
            bad.append(f"{where}: {row['error']}")
        elif row["spill_stores"] or row["spill_loads"]:
            bad.append(f"{where}: spills {row['spill_stores']} B stores / {row['spill_loads']} B loads")
        elif row["shared"] > SM90["shared_per_block"]:
            bad.append(f"{where}: {row['shared']} B of shared memory > {SM90['shared_per_block']}")
    return bad


def row_key(row: dict) -> str:
    """The kernel × config × variant a row describes, as written in the report's first columns."""
    config = ", ".join(f"{k}={v}" for k, v in sorted(row.get("config", {}).items())) or "launcher's choice"
    variant = ", ".join(f"{k}={v}" for k, v in sorted(row["variant"].items()))
    return f"| `{row['name']}` | {' '.join(row['dtypes'])} | {variant} | {config} | {row['num_warps']}"


def markdown(rows: list[dict], versions: str) -> str:
    lines = ["# Static sm_90 report: every Triton kernel × GPU config", "",
             "Generated by `python bench/sm90_report.py` on a machine without a GPU (" + versions + "): each kernel",
             "is compiled ahead of time for sm_90 with every GPU autotuning config (autotuned kernels) or with the",
             "block sizes its launcher picks (others), at the argument types recorded from a forward and backward",
             "pass at realistic sizes. Registers and spills are ptxas's verbose output; shared memory is the",
             "compiled kernel's (dynamic) allocation; occupancy is resident warps / 64 per SM from the sm_90 limits",
             "(65536 registers in units of 256 per warp, 228 KiB shared memory + 1 KiB reserved per block, 32",
             "blocks, 64 warps). `tests/test_sm90_static.py` fails when a row spills or exceeds 227 KiB of shared",
             "memory; every row here can be picked (autotuning tries them all). No SSD kernel holds headdim or",
             "dstate whole (blocks of at most 64 of an output, loops over the rest), so these compiles at Mamba-2",
             "sizes (headdim 64, dstate 128) are the very kernels that run up to headdim, dstate 256.", "",
             "| kernel | pointer dtypes | variant (constexprs) | config | warps | stages | registers | spill stores B "
             "| spill loads B | stack B | shared B | blocks/SM | occupancy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(rows, key=row_key):
        if "error" in row:
            lines.append(f"{row_key(row)} | {row['num_stages']} | error: {row['error'][:80]} |||||||")
            continue
        blocks, fraction = occupancy(row["registers"], row["shared"], row["num_warps"])
        lines.append(f"{row_key(row)} | {row['num_stages']} | {row['registers']} | {row['spill_stores']} | "
                     f"{row['spill_loads']} | {row['stack']} | {row['shared']} | {blocks} | {fraction:.0%} |")
    return "\n".join(lines) + "\n"


def collect(workdir: Path) -> list[dict]:
    """Record every kernel's launches, check that every kernel of the package was launched, compile them all."""
    with record_launches() as specs:
        run_every_kernel()
    missing = package_kernels() - {(s["module"], s["name"]) for s in specs}
    if missing:
        raise RuntimeError(f"kernels never launched by run_every_kernel (add them there): {sorted(missing)}")
    return compile_specs(specs, workdir)


def main() -> int:
    import triton

    with tempfile.TemporaryDirectory() as tmp:
        rows = collect(Path(tmp))
    versions = f"triton {triton.__version__}, torch {torch.__version__}"
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(markdown(rows, versions))
    bad = problems(rows)
    print(f"{len(rows)} compiles written to {REPORT}; {len(bad)} problems", *bad, sep="\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
