import subprocess
import sys


def test_import_compiles_nothing_and_loads_no_kernel_stack():
    """`import lambdaskip` must stay at torch's own cost: no triton, no dynamo, no extension, no transformers."""
    code = ("import sys, lambdaskip; "
            "print(sorted(m for m in ('triton', 'torch._dynamo', 'lambdaskip._extension', 'lambdaskip.kernels', "
            "'transformers', 'torch.utils.cpp_extension') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
