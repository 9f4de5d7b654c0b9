"""Retrofit λ-skips into ``transformers`` models (Mamba-2, GPT-2, BERT, ALBERT) and study their collapse.

``transformers`` is an optional dependency (``pip install 'lambdaskip[hf]'``): it is imported only when
a function here is called, never by ``import lambdaskip``.
"""
from lambdaskip.hf.adapter import (
    SUPPORTED_MODELS,
    RetrofitSummary,
    restore,
    retrofit,
    retrofit_summary,
)

__all__ = ["SUPPORTED_MODELS", "RetrofitSummary", "restore", "retrofit", "retrofit_summary"]
