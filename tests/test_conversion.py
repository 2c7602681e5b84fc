"""Ad-hoc level stacking: a Llama converted to Hope-Attention keeps its logits, and the copies are independent."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hope_hf import HopeForCausalLM
from hope_hf.conversion import hope_config_from_llama, hope_from_llama


def tiny_llama(**overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    kwargs = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    kwargs.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**kwargs)).eval()
    with torch.no_grad():   # non-trivial norms, so a wrong norm mapping cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("levels", [[1], [1, 4, 16]])
@pytest.mark.parametrize("tie", [False, True])
def test_converted_logits_equal_llama(levels, tie):
    llama = tiny_llama(tie_word_embeddings=tie)
    hope = hope_from_llama(llama, levels=levels)
    assert isinstance(hope, HopeForCausalLM) and hope.config.mixer == "attention"
    assert [lv["update_period"] for lv in hope.config.cms_levels] == levels
    ids = torch.randint(0, 99, (2, 23))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0                                              # left padding as generate() makes it
    with torch.no_grad():
        expected = llama(input_ids=ids).logits
        torch.testing.assert_close(hope(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
        expected_padded = llama(input_ids=ids, attention_mask=mask).logits
        got_padded = hope(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got_padded[0, 5:], expected_padded[0, 5:], atol=1e-5, rtol=1e-5)
    assert hope.lm_head.weight.data_ptr() != llama.lm_head.weight.data_ptr()
    assert (hope.lm_head.weight.data_ptr() == hope.model.embed_tokens.weight.data_ptr()) == tie


def test_extra_levels_start_silent_and_learn():
    llama = tiny_llama()
    hope = hope_from_llama(llama, levels=[1, 4]).train()
    layer = hope.model.layers[0].cms.levels
    assert torch.equal(layer[0].down_proj.weight, llama.model.layers[0].mlp.down_proj.weight)
    assert torch.count_nonzero(layer[1].down_proj.weight) == 0
    assert torch.equal(layer[1].gate_proj.weight, layer[0].gate_proj.weight)
    assert layer[1].gate_proj.weight.data_ptr() != layer[0].gate_proj.weight.data_ptr()
    ids = torch.randint(0, 99, (2, 17))
    hope(input_ids=ids, labels=ids).loss.backward()
    assert layer[1].down_proj.weight.grad.abs().sum() > 0       # the new level receives a learning signal
    with torch.no_grad():                                        # and training it leaves the Llama untouched
        layer[0].up_proj.weight.add_(1.0)
    assert not torch.equal(layer[0].up_proj.weight, llama.model.layers[0].mlp.up_proj.weight)


def test_classmethod_and_save_roundtrip(tmp_path):
    llama = tiny_llama()
    hope = HopeForCausalLM.from_llama(llama, levels=[{"update_period": 2, "chunk_size": 8, "lr": 0.0}])
    assert hope.config.cms_levels[0] == {"intermediate_size": 37, "update_period": 2, "chunk_size": 8, "lr": 0.0}
    hope.save_pretrained(tmp_path)
    again = HopeForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 99, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, llama(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(head_dim=16), "head_dim"),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}), "rope_type"),
])
def test_unsupported_llamas_are_refused(overrides, field):
    config = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, **overrides)
    with pytest.raises(ValueError, match=field):
        hope_config_from_llama(config)


@pytest.mark.parametrize("levels", [[], 3, [{"intermediate_size": 12}]])
def test_bad_levels_are_refused(levels):
    with pytest.raises(ValueError, match="levels"):
        hope_config_from_llama(tiny_llama().config, levels=levels)
