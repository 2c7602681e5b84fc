"""The HF contract of HopeModel / HopeForCausalLM on both mixers and the ablations."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import hope_hf  # noqa: F401  (registers the Auto classes)
from hope_hf import HopeConfig, HopeForCausalLM, HopeModel
from hope_hf.self_modifying import SelfModifyingTitans

from conftest import move_input_projection_off_identity, tiny_config_kwargs

VARIANTS = {
    "hope": {},
    "hope-attention": {"mixer": "attention", "num_key_value_heads": 2},
    "titans": {"adaptive_k": False, "adaptive_v": False, "adaptive_rates": False, "inner_optimizer": "gd",
               "cms_levels": [{"intermediate_size": 37, "update_period": 1}]},
    "hope-gd-no-momentum": {"inner_optimizer": "gd", "inner_momentum": False},
    "hope-adaptive-q": {"adaptive_q": True},
    "hope-tied": {"tie_word_embeddings": True},
    "hope-no-weight-decay": {"inner_weight_decay": False},
    "hope-input-projection": {"input_projection": True},
    "titans-no-weight-decay": {"adaptive_k": False, "adaptive_v": False, "adaptive_rates": False,
                               "inner_weight_decay": False},
}


def build(variant: str = "hope", **overrides) -> HopeForCausalLM:
    """The variant, with W_x (if any) moved off its identity initialisation, under which skipping it goes unseen."""
    config = HopeConfig(**tiny_config_kwargs(**{**VARIANTS[variant], **overrides}))
    model = HopeForCausalLM(config).eval()
    return move_input_projection_off_identity(model) if config.input_projection else model


def ids(batch=2, length=21, vocab=99, seed=1):
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_loss_and_gradients_reach_every_parameter(variant):
    model = build(variant).train()
    x = ids()
    out = model(x, labels=x)
    assert out.logits.shape == (2, 21, 99)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_gradients_reach_all_five_memories():
    model = build().train()
    x = ids(length=30)
    model(x, labels=x).loss.backward()
    for layer in model.model.layers:
        bank = layer.mixer.memories
        assert bank.names == ("k", "v", "eta", "alpha", "mem")
        for grad in (bank.w_in.grad, bank.w_out.grad):
            per_memory = grad.abs().sum(dim=(0, 2, 3))
            assert (per_memory > 0).all(), per_memory


@pytest.mark.parametrize("variant", ["hope", "hope-input-projection"])
def test_model_naive_equals_chunked_float64(variant):
    model = build(variant).double()
    x = ids(length=27)
    mixer = model.model.layers[0].mixer
    hidden = torch.randn(2, 27, 32, dtype=torch.float64)
    y_chunk, state_chunk = mixer(hidden)
    mixer.implementation = "naive"
    y_naive, state_naive = mixer(hidden)
    assert ((y_chunk - y_naive).norm() / y_naive.norm()) < 1e-10
    assert ((state_chunk.memory.w_in - state_naive.memory.w_in).norm() / state_naive.memory.w_in.norm()) < 1e-10
    model.set_memory_implementation("naive")
    logits_naive = model(x).logits
    model.set_memory_implementation("chunk")
    logits_chunk = model(x).logits
    assert ((logits_chunk - logits_naive).norm() / logits_naive.norm()) < 1e-10
    with pytest.raises(ValueError, match="implementation"):
        model.set_memory_implementation("fast")


def test_memory_actually_changes_the_output():
    """The memory is not a no-op: a token early in the sequence changes logits of later chunks."""
    model = build()
    x = ids(batch=1, length=24)
    y = x.clone()
    y[0, 0] = 5 if x[0, 0] != 5 else 6
    a, b = model(x).logits, model(y).logits
    # conv window 4: positions >= 4 only see token 0 through the memory
    assert (a[0, 8:] - b[0, 8:]).abs().max() > 1e-6


def test_causality():
    for variant in ("hope", "hope-attention"):
        model = build(variant)
        x = ids(batch=1, length=20)
        y = x.clone()
        y[0, 13:] = 7
        a, b = model(x).logits, model(y).logits
        assert torch.equal(a[0, :13], b[0, :13]), variant


def test_output_contract():
    model = build()
    x = ids()
    out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 21, 32) for h in out.hidden_states)
    full = out.logits
    last = model(x, logits_to_keep=1).logits
    assert last.shape == (2, 1, 99) and torch.allclose(last, full[:, -1:], atol=1e-6)
    picked = model(x, logits_to_keep=torch.tensor([0, 5])).logits
    assert torch.allclose(picked, full[:, [0, 5]], atol=1e-6)
    as_tuple = model(x, labels=x, return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].dim() == 0
    embeds = model.get_input_embeddings()(x)
    assert torch.allclose(model(inputs_embeds=embeds).logits, full, atol=1e-6)


def test_loss_function_receives_kwargs():
    model = build()
    x = ids()
    labels = x.clone()
    labels[:, :5] = -100
    mean_loss = model(x, labels=labels).loss
    summed = model(x, labels=labels, num_items_in_batch=torch.tensor(1)).loss
    n_items = (labels[:, 1:] != -100).sum()
    assert torch.allclose(summed, mean_loss * n_items, rtol=1e-5)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_same_gradients(use_reentrant):
    model = build().train()
    x = ids()
    model(x, labels=x).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert model.is_activation_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    model(x, labels=x).loss.backward()
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, reference[name], atol=1e-6, rtol=1e-5), name


def test_save_load_round_trip_is_exact(tmp_path):
    for variant in ("hope", "hope-attention", "hope-tied"):
        model = build(variant)
        x = ids()
        model.save_pretrained(tmp_path / variant)
        files = {p.name for p in (tmp_path / variant).iterdir()}
        assert "model.safetensors" in files and "pytorch_model.bin" not in files
        loaded, info = HopeForCausalLM.from_pretrained(tmp_path / variant, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert torch.equal(model(x).logits, loaded.eval()(x).logits)
        auto = AutoModelForCausalLM.from_pretrained(tmp_path / variant)
        assert isinstance(auto, HopeForCausalLM)


def test_tied_embeddings():
    model = build("hope-tied")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = build("hope")
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_auto_classes_after_import():
    config = HopeConfig(**tiny_config_kwargs())
    assert isinstance(AutoModelForCausalLM.from_config(config), HopeForCausalLM)
    assert isinstance(AutoModel.from_config(config), HopeModel)
    assert AutoConfig.for_model("hope", **tiny_config_kwargs()).model_type == "hope"


@pytest.mark.parametrize("variant", ["hope", "titans", "hope-attention"])
def test_every_parameter_initialised(variant):
    """No uninitialised memory after from_config, and meta-device init + to_empty + init_weights gives finite values."""
    model = AutoModelForCausalLM.from_config(HopeConfig(**tiny_config_kwargs(**VARIANTS[variant])))
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
        assert param.abs().max() < 1e3, name
    with torch.device("meta"):
        meta = HopeForCausalLM(HopeConfig(**tiny_config_kwargs(**VARIANTS[variant])))
    meta.to_empty(device="cpu")
    for module in meta.modules():
        module._is_hf_initialized = False
        for param in module.parameters(recurse=False):
            param._is_hf_initialized = False
    meta.initialize_weights()
    for (name, param), (_, reference) in zip(meta.named_parameters(), model.named_parameters()):
        assert torch.isfinite(param).all(), name
        # same distribution: compare a scale statistic, not values
        assert torch.allclose(param.float().std(unbiased=False), reference.float().std(unbiased=False),
                              rtol=0.5, atol=1e-3), name
    mixer = next((m for m in model.modules() if isinstance(m, SelfModifyingTitans)), None)
    if mixer is not None and mixer.config.adaptive_rates:
        eta = torch.sigmoid(mixer.eta_bias) * mixer.config.eta_max
        assert torch.allclose(eta, torch.full_like(eta, mixer.config.eta_init))


def test_bad_inputs_raise_clear_errors():
    model = build()
    x = ids()
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(x, inputs_embeds=model.get_input_embeddings()(x))
    with pytest.raises(ValueError, match="token id 99"):
        model(torch.full((1, 4), 99))
    with pytest.raises(ValueError, match="token id -3"):
        model(torch.full((1, 4), -3))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(x, attention_mask=torch.ones(2, 20))
    with pytest.raises(ValueError, match="input_ids must be"):
        model(x[0])
    with pytest.raises(ValueError, match="inputs_embeds must be"):
        model(inputs_embeds=torch.randn(2, 5, 31))


def test_overfits_a_fixed_batch():
    """A tiny Hope drives the loss on one batch down by 10x within 200 steps (CPU)."""
    torch.manual_seed(0)
    model = build().train()
    x = ids(batch=4, length=32, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for step in range(200):
        loss = model(x, labels=x).loss
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < first / 10:
            break
    assert loss.item() < first / 10, (first, loss.item(), step)


def test_bf16_autocast_keeps_memory_in_float32():
    model = build()
    x = ids()
    mixer = model.model.layers[0].mixer
    captured = {}

    def hook(module, args, output):
        captured["dtype"] = output[1].memory.w_in.dtype

    mixer.register_forward_hook(hook)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x).logits
    assert torch.isfinite(logits).all()
    assert captured["dtype"] == torch.float32
    model_bf16 = build().to(torch.bfloat16)
    assert torch.isfinite(model_bf16(x).logits).all()


@pytest.mark.parametrize("variant", ["hope", "hope-attention"])
def test_generate_without_cache_matches_manual_greedy(variant):
    """`generate` (with the recurrent cache) equals a hand-written greedy loop over full forwards."""
    model = build(variant)
    prompt = ids(batch=1, length=6)
    generated = model.generate(prompt, max_new_tokens=7, do_sample=False, pad_token_id=0)
    manual = prompt
    for _ in range(7):
        manual = torch.cat([manual, model(manual).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, manual)


@pytest.mark.parametrize("name", ["hope-tiny", "titans-tiny", "hope-gd-tiny", "hope-no-cms-tiny"])
def test_shipped_configs_finite_at_init_on_long_sequences(name):
    """Stale anchor gradients (C_m steps from one anchor, amplified by momentum) made the GD ablations
    diverge at initialisation with eta_init=0.1; every shipped self-modifying config must stay finite."""
    from hope_hf.model_configs import load_config

    config = load_config(name)
    model = HopeForCausalLM(config).eval()
    x = torch.randint(0, config.vocab_size, (1, 2048), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(model(x).logits).all()


@pytest.mark.parametrize("variant", ["hope", "hope-attention", "titans", "hope-input-projection"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_sequence_alone(variant, side):
    """A 3-token and a 40-token prompt in one padded batch give each row the logits it gets alone."""
    model = build(variant).double()
    short, long = ids(batch=1, length=3, seed=5), ids(batch=1, length=40, seed=6)
    pad = torch.zeros(1, 37, dtype=torch.long)
    if side == "left":
        batch = torch.cat([torch.cat([pad, short], dim=1), long])
        mask = torch.cat([torch.cat([torch.zeros(1, 37), torch.ones(1, 3)], dim=1), torch.ones(1, 40)]).long()
        short_rows = slice(37, 40)
    else:
        batch = torch.cat([torch.cat([short, pad], dim=1), long])
        mask = torch.cat([torch.cat([torch.ones(1, 3), torch.zeros(1, 37)], dim=1), torch.ones(1, 40)]).long()
        short_rows = slice(0, 3)
    logits = model(batch, attention_mask=mask).logits
    alone_short, alone_long = model(short).logits, model(long).logits
    assert torch.allclose(logits[0, short_rows], alone_short[0], atol=1e-10, rtol=1e-8)
    assert torch.allclose(logits[1], alone_long[0], atol=1e-10, rtol=1e-8)


def test_input_projection_starts_as_the_model_without_it():
    """W_x is initialised to the identity: the same other weights give the same logits; moving W_x changes them."""
    mixed = HopeForCausalLM(HopeConfig(**tiny_config_kwargs(input_projection=True))).eval()    # not `build`: unmoved
    plain = build("hope")
    assert all(torch.equal(layer.mixer.input_proj.weight, torch.eye(32)) for layer in mixed.model.layers)
    state = {k: v for k, v in mixed.state_dict().items() if "input_proj" not in k}
    plain.load_state_dict(state, strict=True)
    x = ids()
    assert torch.equal(mixed(x).logits, plain(x).logits)
    extra = sum(p.numel() for p in mixed.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 2 * 32 * 32                          # D² per layer
    with torch.no_grad():
        mixed.model.layers[0].mixer.input_proj.weight.mul_(0.5)
    assert (mixed(x).logits - plain(x).logits).abs().max() > 1e-4



ATTENTION_IGNORES = {"memory_expansion": 3, "projection_chunk_size": 2, "memory_chunk_size": 16, "conv_window": 2,
                     "input_projection": True, "inner_optimizer": "gd", "inner_momentum": False, "adaptive_q": True,
                     "adaptive_k": False, "adaptive_v": False, "adaptive_rates": False, "inner_weight_decay": False,
                     "normalize_values": False, "normalize_inner_step": False, "eta_max": 0.5, "eta_init": 0.2,
                     "alpha_init": 0.9, "alpha_min": 0.5, "momentum_init": 0.9, "memory_implementation": "naive",
                     "memory_checkpoint_chunks": 2}


def test_hope_attention_reads_none_of_the_self_modifying_fields():
    """`SELF_MODIFYING_FIELDS` (the studies compare Hope-Attention configs without them): each set to another valid
    value builds the same weights and the same logits."""
    from hope_hf.configuration_hope import SELF_MODIFYING_FIELDS

    assert set(ATTENTION_IGNORES) == set(SELF_MODIFYING_FIELDS)
    def attention(**overrides) -> HopeForCausalLM:
        torch.manual_seed(0)
        return HopeForCausalLM(HopeConfig(**tiny_config_kwargs(**VARIANTS["hope-attention"], **overrides))).eval()

    reference = attention()
    x = ids()
    expected = reference(x).logits
    for field, value in ATTENTION_IGNORES.items():
        model = attention(**{field: value})
        assert getattr(model.config, field) == value != getattr(reference.config, field), field
        state, reference_state = model.state_dict(), reference.state_dict()
        assert state.keys() == reference_state.keys(), field
        assert all(torch.equal(state[k], reference_state[k]) for k in state), field
        torch.testing.assert_close(model(x).logits, expected, rtol=0, atol=0, msg=field)
