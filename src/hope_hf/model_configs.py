"""The named model configurations of `modeling_configs/`: Hope, its ablations and matched Llama baselines.

Every size follows the shapes of HOPE.md §7 (340M = 24 layers × 1024 × 16 heads, 760M = 24 × 1536 × 16,
1.3B = 18 × 2048 × 8, 32K vocabulary), plus two sizes for small-scale experiments (`eval/experiments/`):
`tiny` (~2M: 4 layers × 128 × 4 heads, 4K vocabulary; trains on a CPU in minutes) and `small` (~6M: 6 layers
× 256 × 8 heads, 4K vocabulary). The CMS
widths (and the Llama `intermediate_size`) are chosen so that every model holds about its nominal number
of parameters (embeddings and output head included, untied). The files pin the architecture and the
ablation switches; initialisation settings of the inner loop (`eta_init`, `alpha_init`, `momentum_init`,
`normalize_values`, ...) are left to the `HopeConfig` defaults.

| family | what it is |
|---|---|
| `hope` | self-modifying Titans mixer (memory expansion r = 1) + 3 CMS levels (update periods 1, 4, 16) |
| `hope-r2` | `hope` with memory expansion r = 2, narrower CMS, same count (`tiny`, `small`): the studies' base |
| `hope-attention` | softmax attention + the same 3 CMS levels |
| `titans` | static k/v/η/α projections, plain GD with momentum, one CMS level (a Titans-like layer) |
| `hope-no-cms` | Hope with one CMS level (period 1) as wide as Hope's three together: "w/o CMS" |
| `hope-gd` | Hope with plain gradient descent instead of DGD: "w/o DGD" |
| `transformer` | `LlamaConfig` (Transformer++) of matched size |

`hope-r2` was `hope` until the studies (`eval/experiments/`, README Results) found r = 1 at the same parameter count
as good and 1.6x faster to train; the studies keep training r = 2 as their base, so their results stay reproducible.

This is not a model file: it is not carried by Hub checkpoints and may import the package.

Example:
    >>> from hope_hf.model_configs import load_config
    >>> config = load_config("hope-tiny")
    >>> config.model_type, config.hidden_size
    ('hope', 128)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from transformers import LlamaConfig, PreTrainedConfig

from .configuration_hope import HopeConfig


def _find_config_dir() -> Path:
    """`<repo>/modeling_configs` for a source checkout or editable install; otherwise the copy a wheel
    install puts in `<prefix>/share/hope-hf/modeling_configs` (setup.cfg `data_files`)."""
    in_repo = Path(__file__).resolve().parents[2] / "modeling_configs"
    installed = Path(sys.prefix) / "share" / "hope-hf" / "modeling_configs"
    return in_repo if in_repo.is_dir() or not installed.is_dir() else installed


#: Folder of the named JSON configurations.
CONFIG_DIR: Path = _find_config_dir()

#: The configuration class of each supported `"model_type"`.
CONFIG_CLASSES: dict[str, type[PreTrainedConfig]] = {"hope": HopeConfig, "llama": LlamaConfig}

#: Nominal parameter count of each size (the suffix of a configuration's name).
NOMINAL_PARAMETERS: dict[str, int] = {
    "tiny": 2_000_000,
    "small": 6_000_000,
    "340m": 340_000_000,
    "760m": 760_000_000,
    "1.3b": 1_300_000_000,
}


def available_configs() -> list[str]:
    """Names of the configurations in `CONFIG_DIR`, sorted.

    Returns:
        The file names without `.json`, e.g. `["hope-1.3b", "hope-340m", ...]`; empty if the folder is missing.
    """
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))


def nominal_parameters(name: str) -> int:
    """Nominal parameter count of a named configuration, read from its size suffix.

    Args:
        name: a name from `available_configs()`, e.g. `"hope-760m"`.

    Returns:
        The nominal number of parameters, e.g. `760_000_000`.

    Raises:
        ValueError: if `name` is not an available configuration or its size is not in `NOMINAL_PARAMETERS`.
    """
    _check_name(name)
    size = name.rsplit("-", 1)[-1]
    if size not in NOMINAL_PARAMETERS:
        raise ValueError(f"config {name!r} has size {size!r}, which has no entry in NOMINAL_PARAMETERS "
                         f"(known sizes: {sorted(NOMINAL_PARAMETERS)})")
    return NOMINAL_PARAMETERS[size]


def load_config(name_or_path: str | os.PathLike[str]) -> PreTrainedConfig:
    """Load a `HopeConfig` or `LlamaConfig`, chosen by the JSON's `"model_type"`.

    Args:
        name_or_path: a name from `available_configs()` (without `.json`), a path to a JSON file, or a
            folder holding a `config.json` (e.g. one written by `save_pretrained`). A string without a
            path separator and not ending in `.json` is looked up as a name first.

    Returns:
        The configuration, validated by its class.

    Raises:
        ValueError: for an unknown name (the message lists the available names) or an unsupported
            `"model_type"`; `HopeConfig` also raises it for invalid fields.
        FileNotFoundError: for a path that does not exist or a folder without `config.json`.
    """
    path = _resolve(name_or_path)
    with open(path, encoding="utf-8") as f:
        config_dict: dict[str, Any] = json.load(f)
    model_type = config_dict.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ValueError(f"{path} has model_type={model_type!r}; supported model types are {sorted(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[model_type].from_dict(config_dict)


def _looks_like_path(value: str | os.PathLike[str]) -> bool:
    if not isinstance(value, str):
        return True
    return value.endswith(".json") or os.sep in value or (os.altsep is not None and os.altsep in value)


def _check_name(name: str) -> None:
    if name not in available_configs():
        raise ValueError(f"unknown model config {name!r}; available configs in {CONFIG_DIR}: {available_configs()}")


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """The JSON file that `name_or_path` designates (see `load_config`)."""
    if not _looks_like_path(name_or_path):
        if name_or_path in available_configs():
            return CONFIG_DIR / f"{name_or_path}.json"
        if not Path(name_or_path).exists():
            _check_name(name_or_path)  # raises the ValueError listing the available names
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    return path


__all__ = [
    "CONFIG_CLASSES",
    "CONFIG_DIR",
    "NOMINAL_PARAMETERS",
    "available_configs",
    "load_config",
    "nominal_parameters",
]
