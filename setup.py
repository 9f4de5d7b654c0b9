"""Build script: the pure-Python package always, the S4D C++/CUDA extension when it can.

The extension is built ahead of time only when torch is importable in the build environment
(``pip install --no-build-isolation .``). Otherwise it is compiled just in time on first use
(see ``lambdaskip/_extension.py``); a missing compiler never makes ``pip install`` fail.
"""
from setuptools import setup


def extension_build_args():
    """ext_modules and cmdclass for the S4D extension, or empty ones when torch is absent."""
    return {}


setup(
    packages=[
        "lambdaskip",
        "lambdaskip.reference",
        "lambdaskip.ops",
        "lambdaskip.modules",
        "lambdaskip.experiments",
        "lambdaskip.kernels",
    ],
    **extension_build_args(),
)
