"""One name per concept: mamba_ssm's spellings (nheads, seqlen, d_state, headdim), the old ones still accepted
with a DeprecationWarning (keywords) or as hidden aliases (CLI flags); one ARCHS, NORMS, METRICS, BACKENDS."""
import argparse
import re
import warnings
from pathlib import Path

import pytest
import torch

from lambdaskip import common, metrics, modules, ops, theory
from lambdaskip.cli import build_parser, main
from lambdaskip.modules import MIXERS, AttentionMixer, build_stack
from lambdaskip.studies import collapse
from lambdaskip.training import TrainConfig
from lambdaskip.training.checkpoint import check_resumable
from lambdaskip.training.data.mqar import MQARConfig, generate_mqar

README = Path(__file__).resolve().parents[1] / "README.md"


def test_attention_takes_nheads_and_the_old_keyword_warns():
    torch.manual_seed(0)
    new = AttentionMixer(16, nheads=4)
    with pytest.warns(DeprecationWarning, match="n_heads"):
        old = AttentionMixer(16, n_heads=4)
    assert new.nheads == old.nheads == old.n_heads == 4
    with pytest.warns(DeprecationWarning, match="n_heads"):
        stack = build_stack("attention", 2, 16, n_heads=2, seed=0)
    assert stack.blocks[0].mixer.nheads == 2
    assert torch.equal(stack(torch.ones(1, 3, 16)), build_stack("attention", 2, 16, nheads=2, seed=0)(torch.ones(1, 3, 16)))


def test_train_config_and_mqar_take_the_old_spellings_with_a_warning():
    with pytest.warns(DeprecationWarning, match="n_heads"), pytest.warns(DeprecationWarning, match="seq_len"):
        config = TrainConfig(n_heads=4, seq_len=32)
    assert (config.nheads, config.seqlen) == (4, 32)
    assert "n_heads" not in vars(config) or config.nheads == 4
    with pytest.warns(DeprecationWarning, match="seq_len"):
        assert MQARConfig(seq_len=32).seqlen == 32
    with pytest.warns(DeprecationWarning, match="seq_len"):
        old = generate_mqar(4, vocab_size=32, seq_len=24, num_pairs=3)
    assert all(torch.equal(a, b) for a, b in zip(old, generate_mqar(4, vocab_size=32, seqlen=24, num_pairs=3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(nheads=4, seqlen=32)  # the new names warn about nothing


def test_a_checkpoint_written_with_the_old_field_names_still_resumes():
    config = TrainConfig(nheads=4, seqlen=32)
    saved = {("n_heads" if k == "nheads" else "seq_len" if k == "seqlen" else k): v for k, v in vars(config).items()}
    check_resumable(saved, config)
    with pytest.raises(ValueError, match="nheads"):
        check_resumable({**saved, "n_heads": 2}, config)


def _hidden_and_listed(command: str) -> tuple[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return sub.format_help(), sub


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_cli_flags_are_field_names_and_old_spellings_are_hidden_aliases(command):
    text, parser = _hidden_and_listed(command)
    assert "--nheads" in text and "--seqlen" in text and "--n-heads" not in text and "--seq-len" not in text
    old = parser.parse_args(["mqar", "--out", "o", "--n-heads", "4", "--seq-len", "32"])
    new = parser.parse_args(["mqar", "--out", "o", "--nheads", "4", "--seqlen", "32"])
    assert (old.nheads, old.seqlen) == (new.nheads, new.seqlen) == (4, 32)
    fields = set(vars(TrainConfig()))
    flags = set(re.findall(r"\s(--[a-z][a-z0-9-]*)", text)) - {"--help"}
    config_flags = {f for f in flags if f[2:].replace("-", "_") in fields}
    assert {"--nheads", "--seqlen", "--d-model", "--d-state", "--headdim", "--batch-size"} <= config_flags


def test_collapse_uses_the_same_flag_style():
    text, _ = _hidden_and_listed("collapse")
    assert "--seqlen" in text and "--d-model" in text


def test_demo_command_is_gone():
    with pytest.raises(SystemExit):
        main(["demo"])


def test_one_definition_each():
    assert modules.NORMS is common.NORMS
    assert collapse.StudyConfig().archs == list(modules.ARCHS) and set(modules.ARCHS) <= set(MIXERS)
    assert set(collapse.RECORDED) <= set(metrics.METRICS) and tuple(metrics.METRIC_FUNCTIONS) == metrics.METRICS
    documented = re.search(r'`backend="auto" \| "reference" \| "triton" \| "extension"`', README.read_text())
    assert documented and ops.BACKENDS == ("auto", "reference", "triton", "extension")


@pytest.mark.parametrize("arch", sorted(MIXERS))
def test_every_mixer_states_its_theorem_constants(arch):
    kwargs = {"mamba2": dict(d_state=8, headdim=8, chunk_size=16)}.get(arch, {})
    stack = build_stack(arch, 2, 16, norm="l2", seed=0, **kwargs).double()
    y = torch.randn(2, 7, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    traces = list(theory.trace_blocks(stack.blocks, y))
    assert len(traces) == 2
    for trace, block in zip(traces, stack.blocks):
        c = block.mixer.theorem_constants(y if trace is traces[0] else traces[0].output)
        assert isinstance(c, modules.MixerConstants) and c.C_M.shape == (2,) and c.S > 0 and c.form in theory.FORMS
    assert torch.equal(traces[-1].output, stack(y))
    assert torch.equal(traces[0].constants.C_M, theory.mixer_constants(stack.blocks[0].mixer, y).C_M)
