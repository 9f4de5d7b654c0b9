"""lambdaskip.retrofit / restore on tiny, randomly initialised transformers models (built offline)."""
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from lambdaskip.hf import SUPPORTED_MODELS, restore, retrofit, retrofit_summary
from lambdaskip.hf.mamba2_mixer import ssd_mixer_forward
from lambdaskip.modules import LambdaSkip
from lambdaskip.testing import assert_close

VOCAB = 61
FAMILIES = ("mamba2", "gpt2", "bert", "albert")
LAYERS = {"mamba2": 3, "gpt2": 2, "bert": 2, "albert": 1}  # ALBERT: one shared layer applied 3 times


def make_model(family: str, seed: int = 0) -> nn.Module:
    """A tiny model of ``family`` with random weights, in eval mode (no dropout)."""
    torch.manual_seed(seed)
    if family == "mamba2":
        config = transformers.Mamba2Config(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=3, state_size=8,
                                           head_dim=12, num_heads=4, expand=2, n_groups=1, chunk_size=8,
                                           use_cache=False)
        model = transformers.Mamba2ForCausalLM(config)
    elif family == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=24, n_layer=2, n_head=4, n_positions=64,
                                         bos_token_id=0, eos_token_id=0, use_cache=False)
        model = transformers.GPT2LMHeadModel(config)
    elif family == "bert":
        config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=40)
        model = transformers.BertModel(config)
    else:
        config = transformers.AlbertConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=24, num_hidden_layers=3,
                                           num_attention_heads=4, intermediate_size=40)
        model = transformers.AlbertModel(config)
    return model.eval()


def run(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def token_ids(seed: int = 1, seqlen: int = 13) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_lambda_one_native_is_exactly_the_original(family):
    model, ids = make_model(family), token_ids()
    with torch.no_grad():
        expected = run(model, ids)
        _, summary = retrofit(model, lam=1.0, placement="native", ssd_scan="never")
        actual = run(model, ids)
    assert torch.equal(actual, expected)
    assert summary.family == family and len(summary.sites) >= summary.layers
    assert retrofit_summary(model) is summary and family in str(summary)


@pytest.mark.parametrize("family", FAMILIES)
def test_restore_round_trips(family):
    model, ids = make_model(family), token_ids()
    keys = list(model.state_dict())
    with torch.no_grad():
        expected = run(model, ids)
        kwargs = {"gating": False} if family == "mamba2" else {}
        retrofit(model, lam=3.0, learnable=True, norm="l2", placement="post", ssd_scan="always", **kwargs)
        changed = run(model, ids)
        assert restore(model) is model
        actual = run(model, ids)
    assert not torch.allclose(changed, expected)
    assert torch.equal(actual, expected)
    assert list(model.state_dict()) == keys
    for module in model.modules():
        assert "forward" not in module.__dict__
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert retrofit_summary(model) is None
    retrofit(model)  # can be retrofitted again
    restore(model)


def test_lambda_zero_removes_the_residual_mamba2():
    model = make_model("mamba2")
    retrofit(model, lam=0.0, ssd_scan="never")
    block = model.backbone.layers[1]
    x = torch.randn(2, 11, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(block(x), block.mixer(block.norm(x)))


def test_lambda_zero_removes_the_residual_gpt2():
    model = make_model("gpt2")
    retrofit(model, lam=0.0)
    block = model.transformer.h[0]
    x = torch.randn(2, 11, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        attn = block.attn(block.ln_1(x))[0]
        assert torch.equal(block(x), block.mlp(block.ln_2(attn)))


def test_lambda_zero_removes_the_residual_bert():
    model = make_model("bert")
    retrofit(model, lam=0.0)
    output = model.encoder.layer[0].output  # LayerNorm(dense(h) + λ·input_tensor)
    generator = torch.Generator().manual_seed(4)
    h, residual = torch.randn(2, 7, 40, generator=generator), torch.randn(2, 7, 24, generator=generator)
    with torch.no_grad():
        assert torch.equal(output(h, residual), output.LayerNorm.__class__.forward(output.LayerNorm, output.dense(h)))
        assert torch.equal(output(h, residual), output(h, 5 * residual))


def test_lambda_zero_removes_the_residual_albert():
    model = make_model("albert")
    retrofit(model, lam=0.0)
    layer = model.encoder.albert_layer_groups[0].albert_layers[0]
    x = torch.randn(2, 9, 24, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        attention = layer.attention(x)[0]
        ffn = layer.ffn_output(layer.activation(layer.ffn(attention)))
        expected = layer.full_layer_layer_norm.__class__.forward(layer.full_layer_layer_norm, ffn)
        assert torch.equal(layer(x), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_learnable_lambda_gets_gradients_and_survives_save_load(family, tmp_path):
    model, ids = make_model(family), token_ids()
    lams = [0.5 + k for k in range(LAYERS[family])]
    norm, placement = ("rmsnorm", "post") if family in ("mamba2", "gpt2") else (None, "native")
    retrofit(model, lam=lams, learnable=True, norm=norm, placement=placement)
    lam_params = {name: p for name, p in model.named_parameters() if name.endswith(".lam")}
    assert len(lam_params) == len(retrofit_summary(model).sites)
    run(model, ids).square().mean().backward()
    for name, p in lam_params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs() > 0, name
    with torch.no_grad():
        for p in lam_params.values():
            p.add_(0.25)
        expected = run(model, ids)
    torch.save(model.state_dict(), tmp_path / "model.pt")

    fresh = make_model(family, seed=7)
    retrofit(fresh, lam=0.0, learnable=True, norm=norm, placement=placement)
    fresh.load_state_dict(torch.load(tmp_path / "model.pt"))
    with torch.no_grad():
        assert torch.equal(run(fresh, ids), expected)
    for name, p in fresh.named_parameters():
        if name in lam_params:
            assert torch.equal(p, lam_params[name])


def test_per_layer_lambda():
    model = make_model("mamba2")
    _, summary = retrofit(model, lam=[0.0, 1.0, 10.0], ssd_scan="never")
    assert [float(block.lambda_skips["mixer"].lam) for block in model.backbone.layers] == [0.0, 1.0, 10.0]
    assert summary.lams == [0.0, 1.0, 10.0]


@pytest.mark.parametrize("gating", [True, False])
def test_mamba2_ssd_scan_path_matches_the_models_own(gating):
    model = make_model("mamba2")
    mixer = model.backbone.layers[0].mixer
    u = torch.randn(2, 19, 24, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        retrofit(model, gating=gating, ssd_scan="never")
        own = mixer(u)
        assert_close(ssd_mixer_forward(mixer, u, gating), own, torch.float32, "ssd_scan mixer vs transformers'")
        restore(model)
        gated = mixer(u)
    assert torch.equal(own, gated) == gating


def test_bert_layernorm_with_copied_weights_is_close_to_the_original():
    model, ids = make_model("bert"), token_ids()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(generator=torch.Generator().manual_seed(8))
        expected = run(model, ids)
        retrofit(model, norm="layernorm")
        assert_close(run(model, ids), expected, torch.float32, "BERT with the fused λ-LayerNorm")


# the norm kind after every sum with placement="post" and norm=None: pre-norms move after the sum,
# post-norm models keep their own (the λ-skip then has no norm of its own)
OWN_POST_NORM = {"mamba2": "rmsnorm", "gpt2": "layernorm", "bert": None, "albert": None}


@pytest.mark.parametrize("norm", [None, "l2", "rmsnorm", "layernorm"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_norm_runs_post_placement(family, norm):
    model, ids = make_model(family), token_ids()
    with torch.no_grad():
        original = run(model, ids)
    _, summary = retrofit(model, lam=10.0, norm=norm, placement="post")
    skips = [m for m in model.modules() if isinstance(m, LambdaSkip)]
    want = norm or OWN_POST_NORM[family]
    assert len(skips) == len(summary.sites) and all(skip.norm == want for skip in skips)
    assert summary.norm.startswith(want or "own")
    with torch.no_grad():
        out = run(model, ids)
    assert torch.isfinite(out).all() and not torch.allclose(out, original)   # λ = 10 went through


def test_unsupported_models_get_a_clear_error():
    with pytest.raises(ValueError, match="Supported models: .*Mamba2Model.*GPT2.*Bert.*Albert") as info:
        retrofit(nn.Sequential(nn.Linear(4, 4)))
    assert all(name in str(info.value) for name in SUPPORTED_MODELS)
    with pytest.raises(TypeError, match="model"):
        retrofit("gpt2")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"norm": "batchnorm"}, ValueError, "norm"),
    ({"placement": "pre"}, ValueError, "placement"),
    ({"lam": [1.0, 2.0]}, ValueError, "lam"),
    ({"lam": float("nan")}, ValueError, "lam"),
    ({"lam": True}, ValueError, "lam"),
    ({"learnable": 1}, TypeError, "learnable"),
    ({"gating": "no"}, TypeError, "gating"),
    ({"ssd_scan": "gpu"}, ValueError, "ssd_scan"),
    ({"norm": "l2", "placement": "native"}, ValueError, "norm"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    model = make_model("mamba2")
    with pytest.raises(error, match=match):
        retrofit(model, **kwargs)
    assert retrofit_summary(model) is None and "forward" not in model.backbone.layers[0].__dict__


def test_gating_is_mamba2_only_and_no_double_retrofit():
    with pytest.raises(ValueError, match="gating"):
        retrofit(make_model("bert"), gating=False)
    model = make_model("gpt2")
    retrofit(model)
    with pytest.raises(ValueError, match="already retrofitted"):
        retrofit(model)
    restore(model)
    with pytest.raises(ValueError, match="not retrofitted"):
        restore(model)


def test_load_local_model_and_collapse_inputs(tmp_path):
    from lambdaskip.hf.collapse import hf_collapse_inputs, load_local_hf_model
    make_model("gpt2").save_pretrained(tmp_path / "tiny-gpt2")
    model, tokenizer = load_local_hf_model(str(tmp_path / "tiny-gpt2"))
    assert type(model).__name__ == "GPT2Model" and tokenizer is None and not model.training
    _, ids, source = hf_collapse_inputs(str(tmp_path / "tiny-gpt2"), ["no tokenizer here"], seqlen=9, batch=3)
    assert ids.shape == (3, 9) and source == "random tokens" and int(ids.max()) < VOCAB
    with pytest.raises(FileNotFoundError, match="not available locally"):
        load_local_hf_model(str(tmp_path / "missing"))


@pytest.mark.parametrize("family, calls", [("mamba2", 3), ("albert", 3)])
def test_layer_trajectory_has_one_row_per_layer_call(family, calls):
    from lambdaskip.hf.collapse import layer_trajectory
    model = make_model(family)
    retrofit(model, lam=0.5)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    rows = layer_trajectory(model, token_ids(), metrics=("mu", "normalized_mu"))
    assert hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert rows["mu"].shape == (calls + 1, 2) and rows["normalized_mu"].shape == (calls + 1, 2)
    assert torch.all((rows["normalized_mu"] > 0) & (rows["normalized_mu"] <= 1))


def test_without_gating_training_mixers_run_on_the_ssd_scan(monkeypatch):
    from lambdaskip.hf import mamba2_mixer
    calls = []
    original = mamba2_mixer.ssd_mixer_forward
    monkeypatch.setattr(mamba2_mixer, "ssd_mixer_forward", lambda *args: calls.append(args[2]) or original(*args))
    model = make_model("mamba2").train()
    retrofit(model, gating=False, ssd_scan="never")
    run(model, token_ids()).sum().backward()
    assert calls == [False] * 3
    model.eval()
    with torch.no_grad():
        run(model, token_ids())
    assert len(calls) == 3  # eval with ssd_scan="never": the model's own mixer code


def test_collapse_study_grid_leaves_the_model_as_it_was():
    from lambdaskip.hf.collapse import hf_collapse_study
    model, ids = make_model("mamba2"), token_ids()
    with torch.no_grad():
        expected = run(model, ids)
    rows = hf_collapse_study(model, ids, lams=(0.0, 10.0), gatings=(True, False), metrics=("mu",))
    assert len(rows) == 2 * 2 * (3 + 1) * 2  # gatings x lams x (layers + 1) x batch
    assert {(r["gating"], r["lam"]) for r in rows} == {(True, 0.0), (True, 10.0), (False, 0.0), (False, 10.0)}
    assert retrofit_summary(model) is None
    with torch.no_grad():
        assert torch.equal(run(model, ids), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("gating", [True, False])
def test_gpu_retrofitted_mamba2_on_lambdaskip_kernels_matches_cpu(gating, monkeypatch):
    from lambdaskip.hf import mamba2_mixer
    calls = []
    original = mamba2_mixer.ssd_mixer_forward
    monkeypatch.setattr(mamba2_mixer, "ssd_mixer_forward", lambda *args: calls.append(args[2]) or original(*args))
    ids = token_ids(seqlen=77)
    cpu, gpu = make_model("mamba2"), make_model("mamba2").cuda()
    retrofit(cpu, lam=10.0, norm="rmsnorm", gating=gating, placement="post", ssd_scan="never")
    retrofit(gpu, lam=10.0, norm="rmsnorm", gating=gating, placement="post")  # λ-norm and SSD scan in Triton
    with torch.no_grad():
        expected = run(cpu, ids)
        assert not calls
        actual = run(gpu, ids.cuda())
    assert calls == [gating] * 3
    assert_close(actual, expected, torch.float32, "retrofitted Mamba-2 on CUDA vs CPU")


def test_mamba2_greedy_generation_with_cache_runs_on_scan_and_step_and_equals_the_original(monkeypatch):
    from lambdaskip import ops
    calls = {"ssd_scan": 0, "ssd_step": 0}
    for name in calls:
        original = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _f=original, _n=name, **k: calls.__setitem__(_n, calls[_n] + 1)
                            or _f(*a, **k))
    model, prompt = make_model("mamba2"), token_ids(seed=8, seqlen=7).clamp(min=1)  # 0 pads: no padding mask
    kwargs = {"max_new_tokens": 6, "do_sample": False, "use_cache": True, "return_dict_in_generate": True,
              "output_scores": True, "pad_token_id": 0}
    expected = model.generate(prompt, **kwargs)
    retrofit(model, lam=1.0, ssd_scan="always")
    with ops.prefer_backend("triton"):
        actual = model.generate(prompt, **kwargs)
    assert calls == {"ssd_scan": 3, "ssd_step": 3 * 5}  # the prompt once per layer, then one step per new token
    assert torch.equal(actual.sequences, expected.sequences)
    assert_close(torch.stack(actual.scores), torch.stack(expected.scores), torch.float32, "greedy logits")
