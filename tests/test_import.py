import subprocess
import sys


def test_import_compiles_nothing_and_loads_no_kernel_stack():
    """`import lambdaskip` must stay at torch's own cost: no triton, no dynamo, no extension, no transformers, and
    not even the transformers adapter (lambdaskip.retrofit loads it on first use)."""
    code = ("import sys, lambdaskip; "
            "print(sorted(m for m in ('triton', 'torch._dynamo', 'lambdaskip._extension', 'lambdaskip.kernels', "
            "'transformers', 'torch.utils.cpp_extension', 'lambdaskip.hf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_retrofit_and_restore_load_the_adapter_on_first_use():
    code = ("import sys, lambdaskip; from lambdaskip import retrofit, restore; import lambdaskip.hf as hf; "
            "print(retrofit is hf.retrofit and restore is hf.restore)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stdout
