"""Random inputs of the SSD scan, shared by the SSD tests: never zeros, A < 0 and dt > 0 as in Mamba-2."""
import torch

F64 = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ARG_NAMES = ("x", "dt", "A", "B", "C")


def make_inputs(b=2, l=37, h=4, p=3, n=5, g=1, *, seed=0, dtype=F64, D_shape=None, z=False, dt_bias=False,
                initial_states=False, device=DEVICE) -> dict[str, torch.Tensor]:
    """A name → tensor dict: x (b, l, h, p), dt (b, l, h), A (h,), B, C (b, l, g, n), and on request D ((h,) for
    D_shape="h", (h, p) for "hp"), z (b, l, h, p), dt_bias (h,), initial_states (b, h, p, n)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=F64) * scale + shift).to(dtype=dtype, device=device)

    t = {"x": rand(b, l, h, p), "dt": rand(b, l, h, scale=0.3).abs() + 0.05,
         "A": (-torch.rand(h, generator=gen, dtype=F64) * 1.5 - 0.1).to(dtype=dtype, device=device),
         "B": rand(b, l, g, n), "C": rand(b, l, g, n)}
    if D_shape == "h":
        t["D"] = rand(h)
    elif D_shape == "hp":
        t["D"] = rand(h, p)
    if z:
        t["z"] = rand(b, l, h, p)
    if dt_bias:
        t["dt_bias"] = rand(h, scale=0.5, shift=-1.0)
    if initial_states:
        t["initial_states"] = rand(b, h, p, n)
    return t


def split(inputs: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """(the positional x, dt, A, B, C; the optional tensors as keyword arguments)."""
    return [inputs[k] for k in ARG_NAMES], {k: v for k, v in inputs.items() if k not in ARG_NAMES}


def packed_seq_idx(lengths, device=DEVICE) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence lengths → seq_idx (1, sum) int32 and cu_seqlens (len + 1,) int32."""
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))
    return seq_idx[None].to(device), cu
