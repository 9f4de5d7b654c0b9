import pytest
import torch

from lambdaskip.ops._backend import choose_backend

CPU = torch.device("cpu")


def test_auto_picks_reference_on_cpu_without_extension():
    assert choose_backend("op", "auto", CPU, ("reference", "triton")) == "reference"


def test_auto_prefers_extension_when_it_can_run():
    assert choose_backend("op", "auto", CPU, ("reference", "extension"), lambda d: True) == "extension"
    assert choose_backend("op", "auto", CPU, ("reference", "extension"), lambda d: False) == "reference"


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        choose_backend("op", "triton", CPU, ("reference", "triton"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert choose_backend("op", "triton", CPU, ("reference", "triton")) == "triton"


def test_forced_extension_that_cannot_run_raises():
    with pytest.raises(RuntimeError, match="extension"):
        choose_backend("op", "extension", CPU, ("reference", "extension"), lambda d: False)


def test_unknown_or_unsupported_backend_raises():
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("op", "fast", CPU, ("reference",))
    with pytest.raises(ValueError, match=r"must be one of \('auto', 'reference'\), got 'triton' \(op has no"):
        choose_backend("op", "triton", CPU, ("reference",))


def test_prefer_backend_steers_auto_where_supported_and_runnable(monkeypatch):
    from lambdaskip.ops import prefer_backend
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with prefer_backend("triton"):
        assert choose_backend("op", "auto", CPU, ("reference", "triton")) == "triton"
        assert choose_backend("op", "auto", CPU, ("reference",)) == "reference"
        with prefer_backend("reference"):
            assert choose_backend("op", "auto", CPU, ("reference", "triton")) == "reference"
        with prefer_backend("extension"):  # does not apply to a triton-only op: the outer preference does
            assert choose_backend("op", "auto", CPU, ("reference", "triton")) == "triton"
        # an explicit request still wins
        assert choose_backend("op", "reference", CPU, ("reference", "triton")) == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with prefer_backend("triton"):
        assert choose_backend("op", "auto", CPU, ("reference", "triton")) == "reference"
    assert choose_backend("op", "auto", CPU, ("reference", "triton")) == "reference"


def test_prefer_backend_rejects_auto_and_unknown():
    from lambdaskip.ops import prefer_backend
    for name in ("auto", "fast"):
        with pytest.raises(ValueError, match="backend must be one of"):
            with prefer_backend(name):
                pass
