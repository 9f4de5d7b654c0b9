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


def test_ssd_scan_auto_takes_the_reference_for_float64_where_triton_could_run(monkeypatch):
    """Under prefer_backend("triton") (the choice "auto" makes on CUDA) a spy on the Triton path sees the
    float32 call, so it can tell; the float64 call goes to the reference instead and matches it."""
    from lambdaskip.ops import prefer_backend, ssd, ssd_scan
    from lambdaskip.reference.ssd import ssd_scan_chunked
    from lambdaskip.testing import assert_close
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []
    triton_path = ssd._ssd_scan_triton
    monkeypatch.setattr(ssd, "_ssd_scan_triton", lambda *a: calls.append(a[0].dtype) or triton_path(*a))
    g = torch.Generator().manual_seed(0)
    b, l, h, p, n = 1, 9, 2, 4, 4
    x, dt, A = torch.randn(b, l, h, p, generator=g), torch.rand(b, l, h, generator=g), -torch.rand(h, generator=g)
    B, C = torch.randn(b, l, 1, n, generator=g), torch.randn(b, l, 1, n, generator=g)
    with prefer_backend("triton"):
        ssd_scan(x, dt, A, B, C, 16)
        assert calls == [torch.float32]
        args64 = [t.double() for t in (x, dt, A, B, C)]
        y = ssd_scan(*args64, 16)
    assert calls == [torch.float32] and y.dtype == torch.float64
    assert_close(y, ssd_scan_chunked(*args64, 16), torch.float64, "y")
