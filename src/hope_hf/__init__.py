"""hope-hf: Hope, the self-modifying continual learner of *Nested Learning*, as a Hugging Face model.

Importing the package registers `HopeConfig` / `HopeModel` / `HopeForCausalLM` with the Auto classes,
so `AutoConfig`, `AutoModel` and `AutoModelForCausalLM` know `model_type="hope"`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import HopeCache
from .configuration_hope import HopeConfig
from .modeling_hope import HopeBlock, HopeForCausalLM, HopeModel, HopePreTrainedModel, cache_argument, output_cache
from .streaming import MemoryStream

__version__ = "0.1.0"

AutoConfig.register("hope", HopeConfig, exist_ok=True)
AutoModel.register(HopeConfig, HopeModel, exist_ok=True)
AutoModelForCausalLM.register(HopeConfig, HopeForCausalLM, exist_ok=True)
# `save_pretrained` writes `auto_map` and copies the model files, so checkpoints load with trust_remote_code
HopeConfig.register_for_auto_class()
HopeModel.register_for_auto_class("AutoModel")
HopeForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["HopeBlock", "HopeCache", "HopeConfig", "HopeForCausalLM", "HopeModel", "HopePreTrainedModel", "MemoryStream",
           "__version__", "cache_argument", "output_cache"]
