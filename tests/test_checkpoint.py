"""Activation checkpointing of λ-skip stacks: the same outputs and gradients as the plain stack (bitwise on
the CPU reference path, within tolerance on the fast paths), μ telemetry recorded once per layer and step
from the forward, torch.compile, and fewer activations kept alive for the backward."""
import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lambdaskip import CollapseProbe, build_stack
from lambdaskip.ops import prefer_backend
from lambdaskip.testing import assert_close

SMALL = {
    "attention": {"n_heads": 2},
    "mamba2": {"headdim": 8, "d_state": 16, "chunk_size": 16},
    "s4d": {"d_state": 8},
    "lti": {"kernel_size": 8},
}


def tokens(b=2, n=11, d=16, seed=0):
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


def step(stack, y, seed=1):
    """One training step's forward and backward: (output, [dy, d(every parameter)])."""
    y = y.detach().requires_grad_(True)
    out = stack(y)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((out * weights).sum(), [y, *stack.parameters()])
    return out, grads


def plain_and_checkpointed(arch, checkpoint, depth=3, **kwargs):
    make = dict(arch=arch, depth=depth, d_model=16, lam=-0.7, learnable=True, seed=0, **SMALL[arch], **kwargs)
    return build_stack(**make), build_stack(**make, checkpoint=checkpoint)


@pytest.mark.parametrize("checkpoint", ["block", 2])
@pytest.mark.parametrize("arch", list(SMALL))
def test_checkpointed_stack_matches_plain_bitwise_on_the_reference_path(arch, checkpoint):
    plain, ckpt = plain_and_checkpointed(arch, checkpoint, mlp=arch == "attention")
    y = tokens(seed=2)
    out, grads = step(plain, y)
    ckpt_out, ckpt_grads = step(ckpt, y)
    assert torch.equal(out, ckpt_out)
    assert len(grads) == len(ckpt_grads)
    assert all(torch.equal(a, b) for a, b in zip(grads, ckpt_grads))


@pytest.mark.parametrize("arch", ["attention", "mamba2", "s4d"])
def test_checkpointed_stack_matches_plain_on_the_fast_paths(arch):
    """Triton λ-norm (and SSD for Mamba-2) under the interpreter, the compiled S4D extension."""
    plain, ckpt = plain_and_checkpointed(arch, "block", depth=2)
    y = tokens(b=1, n=20, seed=3)  # 20 = one chunk of 16 and a ragged tail
    with prefer_backend("triton"), prefer_backend("extension"):
        out, grads = step(plain, y)
        ckpt_out, ckpt_grads = step(ckpt, y)
    assert_close(ckpt_out, out, what="out")
    for name, a, b in zip(["dy", *dict(plain.named_parameters())], ckpt_grads, grads):
        assert_close(a, b, what=name)


def counted_probe(stack):
    """A CollapseProbe on ``stack.blocks`` that also counts, per layer, how often it stores a record."""
    probe = CollapseProbe(stack.blocks, metrics=("mu",))
    probe.counts = {}
    record = probe._record

    def counting(layer, y):
        before = probe._records.get((layer, "mu"))
        record(layer, y)
        if probe._records.get((layer, "mu")) is not before:
            probe.counts[layer] = probe.counts.get(layer, 0) + 1

    probe._record = counting
    return probe


@pytest.mark.parametrize("checkpoint", [None, "block", 2])
def test_mu_telemetry_is_recorded_once_per_layer_from_the_forward(checkpoint):
    plain, ckpt = plain_and_checkpointed("attention", checkpoint or "block", depth=4)
    stack = ckpt if checkpoint else plain
    for block in [*stack.blocks, *plain.blocks]:
        block.skip.track_mu = True
    y = tokens(seed=4)
    step(plain, y)
    expected = [block.skip.last_mu for block in plain.blocks]
    probe = counted_probe(stack)
    with probe:
        out = stack(y.requires_grad_(True))
        recorded = [block.skip.last_mu for block in stack.blocks]
        out.square().sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(recorded, expected))
    assert all(block.skip.last_mu is mu for block, mu in zip(stack.blocks, recorded)), "re-recorded in backward"
    assert probe.counts == {k: 1 for k in range(5)}


def test_compiled_checkpointed_stack_matches_eager_with_and_without_telemetry():
    """fullgraph, without telemetry as it is; with telemetry (Python side effects inside the checkpointed
    region) torch.compile needs ``skip_fwd_side_effects_in_bwd_under_checkpoint``, which says what the eager
    path does: the recomputation does not record."""
    import torch._dynamo
    plain, ckpt = plain_and_checkpointed("attention", "block", depth=3)
    y = tokens(seed=5)
    out, grads = step(plain, y)
    compiled = torch.compile(ckpt, fullgraph=True, backend="aot_eager")
    c_out, c_grads = step(compiled, y)
    assert_close(c_out, out, what="out")
    for a, b in zip(c_grads, grads):
        assert_close(a, b, what="grad")
    torch._dynamo.reset()
    for block in ckpt.blocks:
        block.skip.track_mu = True
    with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):
        compiled = torch.compile(ckpt, fullgraph=True, backend="aot_eager")
        with CollapseProbe(ckpt.blocks, metrics=("mu",)) as probe:
            c_out = compiled(y.requires_grad_(True))
            recorded = [block.skip.last_mu for block in ckpt.blocks]
            c_out.sum().backward()
    assert all(block.skip.last_mu is mu for block, mu in zip(ckpt.blocks, recorded))
    assert probe.trajectory("mu").shape == (4, 2)
    assert_close(probe.trajectory("mu")[-1].float(), torch.stack(recorded)[-1], what="mu")
    torch._dynamo.reset()


class LiveStorages(TorchDispatchMode):
    """Remembers (weakly) the storage of every tensor an op creates; :meth:`live_bytes` sums those still alive,
    each storage once (keyed by its StorageImpl: views share it; a freed one's key may be reused)."""

    def __init__(self):
        super().__init__()
        self.refs = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                ref = StorageWeakRef(t.untyped_storage())
                self.refs[ref.cdata] = (ref, t.untyped_storage().nbytes())
        return out

    def forget(self, t: torch.Tensor) -> None:
        self.refs.pop(StorageWeakRef(t.untyped_storage()).cdata, None)

    def live_bytes(self) -> int:
        return sum(nbytes for ref, nbytes in self.refs.values() if not ref.expired())


def activation_bytes(stack, y) -> int:
    """Bytes of the tensors created in the forward that stay alive (kept for the backward): not the output,
    nor views of the parameters, buffers or input."""
    y = y.requires_grad_(True)
    with LiveStorages() as storages:
        out = stack(y)
    for t in [out, y, *stack.parameters(), *stack.buffers()]:
        storages.forget(t)
    return storages.live_bytes()


def test_checkpointing_keeps_fewer_activations_and_they_grow_more_slowly_with_depth():
    y = tokens(b=2, n=32, d=16, seed=6)
    kept = {}
    for depth in (4, 8):
        for checkpoint in (None, "block", 4):
            stack = build_stack("attention", depth, 16, lam=1.0, seed=0, nheads=2, checkpoint=checkpoint)
            kept[depth, checkpoint] = activation_bytes(stack, y)
    one = y.numel() * 4
    for depth in (4, 8):  # the inputs of blocks 1 … depth − 1 (the stack's input is not new), resp. segments
        assert kept[depth, "block"] == (depth - 1) * one
        assert kept[depth, 4] == (depth // 4 - 1) * one
        assert kept[depth, None] > 5 * kept[depth, "block"]


@pytest.mark.parametrize("checkpoint, error", [(0, ValueError), (-2, ValueError), ("layer", TypeError),
                                               (True, TypeError), (1.5, TypeError)])
def test_build_stack_refuses_bad_checkpoint(checkpoint, error):
    with pytest.raises(error, match="checkpoint must be None, 'block' or a positive int"):
        build_stack("identity", 2, 8, checkpoint=checkpoint)


def test_no_checkpointing_without_grad():
    stack = build_stack("attention", 2, 16, seed=0, nheads=2, checkpoint="block")
    y = tokens(seed=7)
    with torch.no_grad():
        assert torch.equal(stack(y), build_stack("attention", 2, 16, seed=0, nheads=2)(y))
