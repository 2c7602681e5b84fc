"""The model card (`README.md`) that `HopePreTrainedModel.save_pretrained` writes next to the weights.

A Hub-ready card: YAML metadata (`library_name`, `pipeline_tag`, tags), how to load the folder with
`trust_remote_code=True`, and a summary of the configuration. A README.md that hope-hf did not write
(it lacks `CARD_MARKER`) is never overwritten.

This is a model file carried by Hub checkpoints (relative imports only).
"""

from __future__ import annotations

import os

from torch import nn

CARD_MARKER = "<!-- hope-hf model card: rewritten by save_pretrained; delete this line to keep your own edits -->"


def _parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def config_summary(config) -> list[tuple[str, str]]:
    """(field, value) rows describing a `HopeConfig`."""
    rows = [
        ("mixer", config.mixer),
        ("vocab_size", config.vocab_size),
        ("hidden_size", config.hidden_size),
        ("num_hidden_layers", config.num_hidden_layers),
        ("num_heads", config.num_heads),
    ]
    if config.mixer == "attention":
        rows += [("num_key_value_heads", config.num_key_value_heads), ("rope_theta", config.rope_theta)]
    else:
        rows += [
            ("memories per layer", ", ".join(config.memory_names)),
            ("memory_expansion", config.memory_expansion),
            ("projection_chunk_size (C_o)", config.projection_chunk_size),
            ("memory_chunk_size (C_m)", config.memory_chunk_size),
            ("conv_window", config.conv_window),
            ("inner_optimizer", config.inner_optimizer),
            ("inner_momentum", config.inner_momentum),
            ("inner_weight_decay", config.inner_weight_decay),
            ("normalize_values", config.normalize_values),
        ]
    levels = "; ".join(f"{level['intermediate_size']} (every {level['update_period']} steps"
                       f"{', in-context every %d tokens' % level['chunk_size'] if level['chunk_size'] else ''})"
                       for level in config.cms_levels)
    rows += [("CMS levels (width)", levels), ("tie_word_embeddings", config.tie_word_embeddings)]
    return [(name, str(value)) for name, value in rows]


def model_card(model: nn.Module) -> str:
    """The text of the card for `model` (a `HopePreTrainedModel`)."""
    config = model.config
    name = "Hope-Attention" if config.mixer == "attention" else "Hope"
    table = "\n".join(f"| {field} | {value} |" for field, value in config_summary(config))
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- hope
- nested-learning
- custom_code
---
{CARD_MARKER}

# {name} ({_parameter_count(model) / 1e6:.2f}M parameters)

A {name} language model from *Nested Learning: The Illusion of Deep Learning Architectures*
(Behrouz et al., NeurIPS 2025), saved with hope-hf. Each layer is a
{"softmax-attention" if config.mixer == "attention" else "self-modifying Titans"} mixer followed by a
Continuum Memory System. The model code ships in this folder, so loading needs `trust_remote_code=True`
and no extra package.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")   # when a tokenizer was saved with it
out = model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=20)
```

Weights load from `model.safetensors` only. Generation uses a recurrent cache (`HopeCache`):
{"a key/value cache per layer" if config.mixer == "attention" else "the fast weights of every memory, constant size per token"}.

## Configuration

Saved in `{dtype}`.

| field | value |
|---|---|
{table}
"""


def write_model_card(model: nn.Module, save_directory: str | os.PathLike) -> bool:
    """Write `README.md` into `save_directory` unless a README.md not written by hope-hf is there.

    Returns:
        whether the card was written.
    """
    path = os.path.join(save_directory, "README.md")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as existing:
            if CARD_MARKER not in existing.read():
                return False
    with open(path, "w", encoding="utf-8") as card:
        card.write(model_card(model))
    return True


__all__ = ["CARD_MARKER", "config_summary", "model_card", "write_model_card"]
