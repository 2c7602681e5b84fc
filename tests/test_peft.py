"""LoRA on Hope: default targets, only adapters train, memories' initial states trainable or frozen, save/load, merge."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import TrainingArguments

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.schedule import HopeScheduleCallback
from hope_hf.training import lora_config, make_trainer

from conftest import tiny_config_kwargs


def base_model(mixer="self_modifying") -> HopeForCausalLM:
    torch.manual_seed(0)
    return HopeForCausalLM(HopeConfig(**tiny_config_kwargs(num_hidden_layers=1, mixer=mixer))).eval()


def ids(seed=0):
    return torch.randint(3, 99, (2, 12), generator=torch.Generator().manual_seed(seed))


def train(model, tmp_path, steps=4):
    data = [{"input_ids": x, "labels": x.clone()} for x in torch.randint(3, 99, (8, 12))]
    args = TrainingArguments(str(tmp_path / "run"), max_steps=steps, per_device_train_batch_size=2, learning_rate=2e-2,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    trainer = make_trainer(model, args, data)
    trainer.train()
    return trainer


def test_default_targets_cover_both_mixers():
    assert lora_config(base_model()).target_modules == {"q_proj", "o_proj", "g_proj", "gate_proj", "up_proj",
                                                        "down_proj"}
    assert lora_config(base_model("attention")).target_modules == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                   "gate_proj", "up_proj", "down_proj"}
    mixed = HopeForCausalLM(HopeConfig(**tiny_config_kwargs(num_hidden_layers=1, input_projection=True)))
    assert "input_proj" in lora_config(mixed).target_modules
    assert lora_config(base_model(), train_memory_init=True).modules_to_save == ["memories"]
    with pytest.raises(ValueError, match="train_memory_init"):
        lora_config(base_model("attention"), train_memory_init=True)


@pytest.mark.parametrize("train_memory_init", [False, True])
def test_only_adapters_train_and_merged_logits_equal_the_adapter_model(tmp_path, train_memory_init):
    base = base_model()
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    x = ids()
    with torch.no_grad():
        base_logits = base(x).logits
    model = get_peft_model(base, lora_config(base, r=4, train_memory_init=train_memory_init))
    trainer = train(model, tmp_path)
    schedule = next(c for c in trainer.callback_handler.callbacks if isinstance(c, HopeScheduleCallback))
    assert schedule.update_counts == [4, 1]                            # LoRA factors of the CMS levels are scheduled

    for name, param in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            assert param.requires_grad, name
        else:                                                          # the base model, frozen and untouched
            key = name.replace("base_model.model.", "").replace(".base_layer", "").replace(".original_module", "")
            assert not param.requires_grad and torch.equal(param, original[key]), name
    memories = model.base_model.model.model.layers[0].mixer.memories
    if train_memory_init:
        trained = memories.modules_to_save["default"].w_in
        assert not torch.equal(trained, original["model.layers.0.mixer.memories.w_in"])
        assert torch.equal(memories.original_module.w_in, original["model.layers.0.mixer.memories.w_in"])

    model.eval()
    with torch.no_grad():
        adapter_logits = model(input_ids=x).logits
    assert (adapter_logits - base_logits).abs().max() > 1e-3          # the adapters did something

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(base_model(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, adapter_logits, rtol=1e-6, atol=1e-6)

    merged = model.merge_and_unload()
    assert type(merged) is HopeForCausalLM
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, adapter_logits, rtol=1e-5, atol=1e-5)
