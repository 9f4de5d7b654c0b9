"""Build script: the pure-Python package always, the S4D C++/CUDA extension when it can.

The extension is built ahead of time only when torch is importable in the build environment
(``pip install --no-build-isolation .``). Otherwise it is compiled just in time on first use
(see ``lambdaskip/_extension.py``); a missing compiler never makes ``pip install`` fail.
"""
import os
import shutil
import warnings

from setuptools import setup


def extension_build_args():
    """ext_modules and cmdclass for the S4D extension, or empty ones when it cannot be built here.

    Builds ``lambdaskip._s4d_ext`` from csrc/ when torch is importable (``--no-build-isolation``), a C++
    compiler is on PATH and LAMBDASKIP_SKIP_EXTENSION_BUILD is not 1; CUDA sources are added when torch
    has CUDA and nvcc is found. A failed compile only warns: the extension is then built just in time.
    """
    if os.environ.get("LAMBDASKIP_SKIP_EXTENSION_BUILD", "0") == "1":
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        return {}
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return {}
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    sources = ["csrc/s4d_cpu.cpp", "csrc/s4d_bindings.cpp"] + (["csrc/s4d_cuda.cu"] if with_cuda else [])
    defines = ["-DLAMBDASKIP_WITH_CUDA"] if with_cuda else []
    flags = {"cxx": ["-O3", *defines], "nvcc": ["-O3", "--expt-relaxed-constexpr", *defines]}
    make = CUDAExtension if with_cuda else CppExtension
    # optional=True: setuptools skips copying a module that was not built
    extension = make("lambdaskip._s4d_ext", sources, extra_compile_args=flags, optional=True)

    class OptionalBuildExtension(BuildExtension):
        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as error:  # never fail the install: lambdaskip/_extension.py builds it on use
                warnings.warn(f"building lambdaskip._s4d_ext failed ({error}); it will be compiled on first use")

    return {"ext_modules": [extension], "cmdclass": {"build_ext": OptionalBuildExtension}}


setup(
    packages=[
        "lambdaskip",
        "lambdaskip.reference",
        "lambdaskip.ops",
        "lambdaskip.modules",
        "lambdaskip.studies",
        "lambdaskip.studies.collapse",
        "lambdaskip.training",
        "lambdaskip.training.data",
        "lambdaskip.hf",
        "lambdaskip.cli",
        "lambdaskip.kernels",
        "lambdaskip.csrc",
    ],
    **extension_build_args(),
)
