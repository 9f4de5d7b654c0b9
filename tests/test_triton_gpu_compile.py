"""Every Triton kernel compiles for the GPU, with every autotuning config, on a machine without one.

The interpreter (how the other tests run the kernels on CPU) accepts programs that the GPU compiler
rejects, and never checks shared memory. So the launches of a forward and backward pass at realistic sizes
are recorded under the interpreter (argument dtypes, constexprs), then a subprocess without the interpreter
compiles each kernel ahead of time with ``triton.compile`` for sm_90 (H100/H200), once per GPU autotuning
config, and checks the shared memory each needs against the 227 KiB an sm_90 block may use.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402
import triton.runtime.interpreter as interpreter  # noqa: E402

from lambdaskip.ops import lambda_norm, ssd_scan  # noqa: E402

POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64",
                 torch.int32: "*i32", torch.int64: "*i64"}
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _argument_type(value):
    if isinstance(value, torch.Tensor):
        return POINTER_TYPES[value.dtype]
    if value is None:
        return "constexpr"
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if abs(value) < 2**31 else "i64"
    return "fp32"


def _record_launches(monkeypatch) -> list[dict]:
    """Patch the interpreter so that every kernel launch is recorded as a compile spec."""
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

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recording_run)
    return specs


def _run_every_kernel():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        # λ-norm: fused rows (d = 1024, 4096) and the looped kernel (d = 12288 > 8192), every norm, all outputs;
        # one λ, and one λ per batch element (fused and looped)
        for d, norm, lams in ((1024, "layernorm", ()), (4096, "rmsnorm", ()), (12288, "layernorm", ()),
                              (1024, "l2", ()), (1024, "layernorm", (2,)), (12288, "rmsnorm", (2,))):
            x, r = (torch.randn(2, 2, d, generator=g).to(dtype).requires_grad_() for _ in range(2))
            lam = torch.full(lams, 0.5, requires_grad=True)
            w = torch.ones(d, dtype=dtype, requires_grad=True)
            b = torch.zeros(d, dtype=dtype, requires_grad=True) if norm == "layernorm" else None
            out, h, _ = lambda_norm(x, r, lam, w, b, norm=norm, prenorm=True, return_mu=True, backend="triton")
            (out.float().sum() + h.float().sum()).backward()
        # SSD: Mamba-2 sizes (headdim 64, dstate 128) at the default chunk and the benchmark's 256
        for chunk_size in (64, 256):
            x = torch.randn(1, chunk_size + 3, 2, 64, generator=g).to(dtype).requires_grad_()
            dt = torch.rand(1, chunk_size + 3, 2, generator=g).requires_grad_()
            A = (-torch.rand(2, generator=g)).requires_grad_()
            B, C = (torch.randn(1, chunk_size + 3, 1, 128, generator=g).to(dtype).requires_grad_() for _ in range(2))
            h0 = torch.randn(1, 2, 64, 128, generator=g).to(dtype).requires_grad_()
            y, final = ssd_scan(x, dt, A, B, C, chunk_size=chunk_size, initial_states=h0, return_final_states=True,
                                backend="triton")
            (y.float().sum() + final.float().sum()).backward()


COMPILE_SPECS = textwrap.dedent('''
    import concurrent.futures, importlib, json, os, sys
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    SHARED_LIMIT = 232448  # bytes of shared memory one block may use on sm_90


    def jobs(spec):
        kernel, configs = getattr(importlib.import_module(spec["module"]), spec["name"]), [None]
        while not isinstance(kernel, triton.runtime.jit.JITFunction):
            configs = getattr(kernel, "configs", configs)
            kernel = kernel.fn
        for config in configs:
            yield spec, (config.kwargs, config.num_warps, config.num_stages) if config else None


    def compile_one(job):
        spec, config = job
        kernel = getattr(importlib.import_module(spec["module"]), spec["name"])
        while not isinstance(kernel, triton.runtime.jit.JITFunction):
            kernel = kernel.fn
        constexprs = {k: getattr(tl, v["tl_dtype"].replace("bf16", "bfloat16").replace("fp", "float"))
                      if isinstance(v, dict) else v for k, v in spec["meta"].items()}
        options = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
        if config:
            constexprs.update(config[0])
            options = {"num_warps": config[1], "num_stages": config[2]}
        signature = {}
        for name, param in zip(kernel.arg_names, kernel.params):
            signature[name] = "constexpr" if param.is_constexpr else spec["types"][name]
            if signature[name] == "constexpr":
                constexprs.setdefault(name, None)
        try:
            binary = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                                    options=options)
        except Exception as error:
            return f"{spec['name']} {constexprs} {options}: {type(error).__name__}: {str(error)[:400]}"
        if binary.metadata.shared > SHARED_LIMIT:
            return f"{spec['name']} {constexprs} {options}: {binary.metadata.shared} B of shared memory"
        return None


    if __name__ == "__main__":
        work = [job for spec in json.load(open(sys.argv[1])) for job in jobs(spec)]
        with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
            failures = [f for f in pool.map(compile_one, work) if f]
        print(json.dumps({"compiled": len(work), "failures": failures}))
''')


def test_every_triton_kernel_compiles_for_sm90_with_every_config(monkeypatch, tmp_path):
    specs = _record_launches(monkeypatch)
    _run_every_kernel()
    names = {spec["name"] for spec in specs.values()}
    assert {"_forward_fused_kernel", "_forward_looped_kernel", "_backward_fused_kernel", "_backward_looped_kernel",
            "_chunk_scan_kernel", "_chunk_state_kernel", "_state_passing_kernel"} <= names
    spec_file = tmp_path / "specs.json"
    spec_file.write_text(json.dumps(list(specs.values())))
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "cache"),
           "TRITON_DEFAULT_FP_FUSION": "1"}
    script = tmp_path / "compile_specs.py"
    script.write_text(COMPILE_SPECS)
    done = subprocess.run([sys.executable, str(script), str(spec_file)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["compiled"] >= len(specs)
    assert not report["failures"], "\n".join(report["failures"])
