"""`HopeLM`: the lm-evaluation-harness backend for Hope, registered as `--model hope`.

It is lm-eval's `HFLM` (tokenisation, batching, rolling windows, generation are the harness's own) with
one contract made explicit: **every request starts from the meta-learned initial memory state**.
Hope's fast weights live only inside one `forward` call (or inside the cache a `generate` call builds
for itself), so nothing may carry state from one request or batch to the next:

- log-likelihoods: each batch is one `model(input_ids, use_cache=False)` call with no
  `past_key_values`; rows of a batch have separate fast states, and lm-eval pads on the right, where
  the padding comes after every real token and so cannot reach it (the model is causal);
- generation: `generate` builds a fresh recurrent cache per call (left-padded batches are handled
  by the model's attention mask).

`tests/test_lm_eval.py` pins this: batched and unbatched runs give the same log-likelihoods.

Use (registering needs this module imported, lm-eval has no plug-in discovery):

    python -m hope_hf.lm_eval_backend run --model hope --model_args pretrained=DIR --tasks piqa --device cpu
    python -m lm_eval run --model hf --model_args pretrained=DIR,trust_remote_code=True --tasks piqa

or from Python: `lm_eval.simple_evaluate(model=HopeLM(pretrained=model, tokenizer=tok), tasks=[...])`.
This is not a model file (it imports lm-eval, the `eval` extra).
"""

from __future__ import annotations

import os

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM


@register_model("hope")
class HopeLM(HFLM):
    """lm-eval backend for `HopeForCausalLM` (either mixer), with no state shared between requests.

    Args:
        pretrained: a saved folder / Hub name, or a `HopeForCausalLM` instance (then pass `tokenizer`).
        memory_implementation: `"chunk"` (default) or `"naive"` (the token-by-token reference, slow).
        **kwargs: every `HFLM` argument (`tokenizer`, `batch_size`, `device`, `dtype`, `max_length`, ...).
    """

    def __init__(self, pretrained, memory_implementation: str = "chunk", **kwargs) -> None:
        if kwargs.setdefault("backend", "causal") != "causal":
            raise ValueError(f"HopeLM is a causal LM: backend must be 'causal', got {kwargs['backend']!r}")
        super().__init__(pretrained=pretrained, **kwargs)
        model_type = getattr(self.config, "model_type", None)
        if model_type != "hope":
            raise ValueError(
                f"HopeLM evaluates Hope models (model_type 'hope'), got model_type {model_type!r}: "
                "use `--model hf` for other models"
            )
        self.model.set_memory_implementation(memory_implementation)     # validates the name

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] of one batch [B, T], each row from the initial memory state."""
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            return self.model(input_ids=inps, past_key_values=None, use_cache=False).logits

    def get_model_info(self) -> dict:
        """Parameter count and dtype; the Hub is asked for a commit hash only when `pretrained` names a
        Hub repository (not a local folder or a model object), so offline runs never reach the network."""
        if isinstance(self.pretrained, str) and not os.path.isdir(self.pretrained):
            return super().get_model_info()
        return {"model_num_parameters": self.model.num_parameters(), "model_dtype": self.model.dtype,
                "model_revision": self.revision, "model_sha": ""}


def main() -> None:
    """`python -m hope_hf.lm_eval_backend ...`: lm-eval's own command line with `--model hope` registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()


__all__ = ["HopeLM"]
