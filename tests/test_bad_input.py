"""The bad-input battery of the public ops: for each op and each of its arguments, a wrong type or value
raises one TypeError / ValueError, in one line, that names that argument (and not a neighbour)."""
import ast
import re

import pytest
import torch

from lambdaskip.ops import attention, lambda_norm, s4d_conv, s4d_kernel, ssd_scan
from lambdaskip.reference.s4d import s4d_init

NAN, INF = float("nan"), float("inf")


def attention_args():
    q = torch.randn(2, 3, 5, 4)
    return dict(q=q, k=torch.randn(2, 3, 5, 4), v=torch.randn(2, 3, 5, 6), causal=True, scale=0.5)


def lambda_norm_args():
    return dict(x=torch.randn(2, 5, 7), residual=torch.randn(2, 5, 7), lam=0.5, weight=torch.randn(7),
                bias=torch.randn(7), eps=1e-5, norm="layernorm", prenorm=False, residual_in_fp32=False,
                return_mu=False)


def s4d_kernel_args():
    log_dt, A_re, A_im, C = s4d_init(3, 8, generator=torch.Generator().manual_seed(0))
    return dict(log_dt=log_dt, A_re=A_re, A_im=A_im, C=C, L=9)


def s4d_conv_args():
    return dict(u=torch.randn(2, 3, 9), K=torch.randn(3, 9), D=torch.randn(3), method="direct")


def ssd_scan_args():
    b, l, h, p, g, n = 2, 9, 4, 8, 2, 8
    return dict(x=torch.randn(b, l, h, p), dt=torch.rand(b, l, h), A=-torch.rand(h), B=torch.randn(b, l, g, n),
                C=torch.randn(b, l, g, n), chunk_size=16, D=torch.randn(h), z=torch.randn(b, l, h, p),
                dt_bias=torch.randn(h), dt_softplus=True, dt_limit=(0.0, 1.0),
                initial_states=torch.randn(b, h, p, n), return_final_states=False)


OPS = {"attention": (attention, attention_args), "lambda_norm": (lambda_norm, lambda_norm_args),
       "s4d_kernel": (s4d_kernel, s4d_kernel_args), "s4d_conv": (s4d_conv, s4d_conv_args),
       "ssd_scan": (ssd_scan, ssd_scan_args)}


def shrink(t, dim=-1):
    return t.narrow(dim, 0, t.shape[dim] - 1)


# (op, argument, how to break it given the good value, exception)
CASES = [
    ("attention", "q", lambda q: q.long(), TypeError),
    ("attention", "q", lambda q: q[0], ValueError),
    ("attention", "k", shrink, ValueError),
    ("attention", "k", lambda k: k.double(), TypeError),
    ("attention", "v", lambda v: shrink(v, 2), ValueError),
    ("attention", "causal", lambda _: 1, TypeError),
    ("attention", "causal", lambda _: "yes", TypeError),
    ("attention", "scale", lambda _: NAN, ValueError),
    ("attention", "scale", lambda _: INF, ValueError),
    ("attention", "scale", lambda _: -0.5, ValueError),
    ("attention", "scale", lambda _: 0, ValueError),
    ("attention", "scale", lambda _: "0.5", TypeError),
    ("attention", "scale", lambda _: torch.tensor(0.5), TypeError),
    ("lambda_norm", "x", lambda x: x.int(), TypeError),
    ("lambda_norm", "residual", shrink, ValueError),
    ("lambda_norm", "lam", lambda _: "0.5", TypeError),
    ("lambda_norm", "lam", lambda _: torch.ones(3), ValueError),
    ("lambda_norm", "weight", shrink, ValueError),
    ("lambda_norm", "weight", lambda w: w.bool(), TypeError),
    ("lambda_norm", "bias", shrink, ValueError),
    ("lambda_norm", "eps", lambda _: NAN, ValueError),
    ("lambda_norm", "eps", lambda _: 0.0, ValueError),
    ("lambda_norm", "eps", lambda _: "1e-5", TypeError),
    ("lambda_norm", "norm", lambda _: "batchnorm", ValueError),
    ("lambda_norm", "prenorm", lambda _: 1, TypeError),
    ("lambda_norm", "residual_in_fp32", lambda _: None, TypeError),
    ("lambda_norm", "return_mu", lambda _: "no", TypeError),
    ("s4d_kernel", "log_dt", lambda t: t[:2], ValueError),
    ("s4d_kernel", "log_dt", lambda t: t.double(), TypeError),
    ("s4d_kernel", "A_re", shrink, ValueError),
    ("s4d_kernel", "A_re", lambda t: t.abs(), ValueError),
    ("s4d_kernel", "A_re", lambda t: t.half(), TypeError),
    ("s4d_kernel", "A_im", lambda t: shrink(t, 0), ValueError),
    ("s4d_kernel", "A_im", lambda t: t.double(), TypeError),
    ("s4d_kernel", "C", shrink, ValueError),
    ("s4d_kernel", "C", lambda t: t.real, TypeError),
    ("s4d_kernel", "L", lambda _: -1, ValueError),
    ("s4d_kernel", "L", lambda _: 9.0, TypeError),
    ("s4d_conv", "u", lambda t: t[0], ValueError),
    ("s4d_conv", "u", lambda t: t.long(), TypeError),
    ("s4d_conv", "K", shrink, ValueError),
    ("s4d_conv", "K", lambda t: t.to(torch.complex64), TypeError),
    ("s4d_conv", "D", shrink, ValueError),
    ("s4d_conv", "method", lambda _: "fast", ValueError),
    ("ssd_scan", "x", lambda t: t[0], ValueError),
    ("ssd_scan", "dt", shrink, ValueError),
    ("ssd_scan", "A", shrink, ValueError),
    ("ssd_scan", "B", shrink, ValueError),
    ("ssd_scan", "B", lambda t: shrink(t, 2), ValueError),
    ("ssd_scan", "C", shrink, ValueError),
    ("ssd_scan", "chunk_size", lambda _: 0, ValueError),
    ("ssd_scan", "chunk_size", lambda _: 16.0, TypeError),
    ("ssd_scan", "D", shrink, ValueError),
    ("ssd_scan", "z", shrink, ValueError),
    ("ssd_scan", "dt_bias", shrink, ValueError),
    ("ssd_scan", "dt_softplus", lambda _: 1, TypeError),
    ("ssd_scan", "dt_limit", lambda _: (1.0, 0.0), ValueError),
    ("ssd_scan", "dt_limit", lambda _: 1.0, TypeError),
    ("ssd_scan", "initial_states", shrink, ValueError),
    ("ssd_scan", "return_final_states", lambda _: "yes", TypeError),
] + [(op, "backend", lambda _: "cuda", ValueError) for op in OPS]


def case_id(case):
    op, arg = case[:2]
    return f"{op}-{arg}"


@pytest.mark.parametrize("op,arg,breaks,error", CASES, ids=[f"{case_id(c)}-{i}" for i, c in enumerate(CASES)])
def test_bad_argument_is_named_in_one_line(op, arg, breaks, error):
    fn, good = OPS[op]
    kwargs = good()
    kwargs[arg] = breaks(kwargs.get(arg))
    with pytest.raises(error) as info:
        fn(**kwargs)
    message = str(info.value)
    assert "\n" not in message, f"more than one line: {message!r}"
    assert re.search(rf"\b{arg}\b", message), f"{op}: the error for {arg} does not name it: {message!r}"


@pytest.mark.parametrize("op", OPS)
def test_good_arguments_pass(op):
    """The battery's baseline: each good call runs, so each failure above is the broken argument's."""
    fn, good = OPS[op]
    fn(**good())


@pytest.mark.parametrize("op", OPS)
def test_backend_error_lists_only_backends_the_op_accepts(op):
    fn, good = OPS[op]
    with pytest.raises(ValueError) as info:
        fn(**good(), backend="cuda")
    listed = ast.literal_eval(re.search(r"must be one of (\(.*?\))", str(info.value)).group(1))
    assert "auto" in listed and "reference" in listed
    for backend in listed:   # every listed backend is accepted: it runs, or cannot run here (RuntimeError)
        try:
            fn(**good(), backend=backend)
        except RuntimeError as error:
            assert "cannot run" in str(error) or "unavailable" in str(error), error


def test_attention_mixer_refuses_a_non_bool_causal():
    from lambdaskip.modules import AttentionMixer
    with pytest.raises(TypeError, match="causal must be a bool"):
        AttentionMixer(8, 2, causal=0)
