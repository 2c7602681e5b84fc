"""`hope-hf bench`: speed, memory and FLOP/s of Hope, Hope-Attention, Titans and a same-size Llama in one run.

For every model and sequence length T it measures
  - training tokens/s: forward + backward + AdamW step (`use_cache=False`, loss on every position);
  - inference tokens/s: a forward without gradients or cache, keeping one logit;
  - decode ms/token: greedy one-token steps (batch 1, cache on) after a prompt of T tokens;
  - peak memory of one training and one inference step (see `step_peak_mib` for what is measured where);
  - the cache's size after the T-token prompt;
  - achieved FLOP/s (`hope_hf.flops`: matmuls only, training = 3 × forward) as a fraction of the matrix
    multiplication peak measured on the same machine in the same run (`matmul_step`).
Times are medians of `repeats` steps after `warmup` steps. The models take their turns round robin (one
step each, then the next round; the peak's matmul takes a turn in every training and inference round and
a step's fraction of peak is taken against the matmul of its own round), so a change of load on a shared
machine hits all of them alike; the
decoding steps go round robin over every (model, context) cell. Every length runs the same number of
tokens per step (`tokens_per_step`): batch = tokens_per_step // T, at least 1 (so a length longer than
`tokens_per_step` runs more tokens per step; the table prints the batch).

The models: each family takes the switches of `modeling_configs/<family>-tiny.json` (mixer, memories,
chunk sizes, inner optimiser, CMS levels and their periods) at the bench shape (width, depth, heads,
vocabulary); the widths of its CMS levels are then set so it holds as many parameters as `hope` with
the default CMS (three levels as wide as the model); the Llama's MLP width is matched the same way
(`hope_hf.baselines.matched_llama_config`). Every model is printed with its parameter count. A `Variant` is a
family with other switches (`--variant hope-fast=hope:adaptive_rates=false,projection_chunk_size=32`), built the
same way and measured beside the others: the cost of a setting, side by side.

This is not a model file. CPU smoke (a minute on 2 cores):
    hope-hf --threads 1 bench --lengths 128 256 --tokens-per-step 256 --repeats 2
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedConfig

from .baselines import cms_width_for, count_parameters, matched_llama_config, meta_parameter_count, with_cms_width
from .configuration_hope import FAST_MEMORY_IMPLEMENTATIONS, HopeConfig
from .flops import forward_flops, training_flops
from .model_configs import CONFIG_DIR, load_config
from .modeling_hope import HopeForCausalLM, cache_argument, output_cache

#: The reference every ratio is taken against.
REFERENCE = "llama"
#: The key of the matmul that takes a turn in every timed round.
MATMUL = "matmul"
#: Families that `--models` accepts: those with a `modeling_configs/<family>-tiny.json` (`hope-r2`: Hope with memory
#: expansion r = 2, the default until session 16).
FAMILIES = ("hope", "hope-attention", "titans", "hope-gd", "hope-no-cms", "hope-r2")
#: The family whose parameter count (at the bench shape, default CMS levels) every model of a run holds: r = 2's,
#: the count of every bench run so far (r = 1 then takes wider CMS levels, as in `modeling_configs/hope-*`).
COUNT_FAMILY = "hope-r2"
#: What a run can measure.
PARTS = ("train", "infer", "decode", "memory")

# ------------------------------------------------------------------------------------------------------------
# the models
# ------------------------------------------------------------------------------------------------------------

#: `HopeConfig` fields a variant may not set: the bench shape's own, and the CMS levels (their width is what matches
#: the parameter count).
_NOT_VARIANT_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_heads",
                       "num_key_value_heads", "max_position_embeddings", "cms_levels")


@dataclass(frozen=True)
class Variant:
    """A model measured beside the families: `family`'s switches with `overrides` (`HopeConfig` fields) on top,
    e.g. `Variant("hope-static-rates", "hope", {"adaptive_rates": False})`; its CMS widths are set to the run's
    parameter count like every family's."""

    name: str
    family: str
    overrides: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Variant:
        """`NAME=FAMILY:FIELD=VALUE[,FIELD=VALUE...]` (each VALUE read as JSON, else kept as a string:
        `hope-fast=hope:adaptive_rates=false,projection_chunk_size=32`, `hope-gd=hope:inner_optimizer=gd`).

        Raises:
            ValueError: naming the text when it is not of that form.
        """
        name, _, rest = text.partition("=")
        family, _, assignments = rest.partition(":")
        pairs = [item.partition("=") for item in assignments.split(",")] if assignments else []
        if not name or not family or any(not key or not sep for key, sep, _ in pairs):
            raise ValueError(f"variant {text!r}: expected NAME=FAMILY:FIELD=VALUE[,FIELD=VALUE...]")
        overrides = {}
        for key, _, value in pairs:
            try:
                overrides[key] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key] = value
        return cls(name, family, overrides)


def family_config(family: str, *, hidden_size: int, layers: int, heads: int, vocab_size: int,
                  max_position_embeddings: int, parameters: int | None = None,
                  overrides: dict | None = None) -> HopeConfig:
    """`family`'s switches at the bench shape, with `overrides` (other `HopeConfig` fields) on top, its CMS widths
    set to hold `parameters` (if given).

    Raises:
        ValueError: for an unknown family, an override of an unknown field or of the shape or CMS (named with its
            value), an invalid value (`HopeConfig` names it), or a parameter count the CMS cannot reach.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose from {FAMILIES} (and {REFERENCE!r})")
    known = HopeConfig().to_dict()
    for key, value in (overrides or {}).items():
        if key in _NOT_VARIANT_FIELDS or key not in known:
            why = "is set by the bench" if key in _NOT_VARIANT_FIELDS else "is not a HopeConfig field"
            raise ValueError(f"override {key}={value!r} of {family}: {key} {why}")
    spec = json.loads((CONFIG_DIR / f"{family}-tiny.json").read_text())
    shape = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers, num_heads=heads,
                 num_key_value_heads=heads, max_position_embeddings=max_position_embeddings)
    spec = {k: v for k, v in spec.items() if k != "model_type"} | shape | (overrides or {})
    config = HopeConfig(**spec)
    if parameters is None:
        return config
    width = cms_width_for(config, parameters)
    if width < 1:
        raise ValueError(f"{family} at hidden_size={hidden_size} holds "
                         f"{meta_parameter_count(with_cms_width(config, 1)):,} parameters with CMS width 1, "
                         f"more than the {parameters:,} asked")
    return with_cms_width(config, width)


def bench_configs(families: Sequence[str], *, hidden_size: int = 256, layers: int = 4, heads: int = 4,
                  vocab_size: int = 8192, max_position_embeddings: int = 9216,
                  variants: Sequence[Variant] = ()) -> dict[str, PreTrainedConfig]:
    """The configurations of a run: each family in `families`, each of `variants`, then the Llama, all with one
    parameter count.

    The count is that of `COUNT_FAMILY` at this shape with the default CMS (`HopeConfig` default levels).

    Raises:
        ValueError: a variant named like a family, the Llama or another variant, or one `family_config` refuses.
    """
    shape = dict(hidden_size=hidden_size, layers=layers, heads=heads, vocab_size=vocab_size,
                 max_position_embeddings=max_position_embeddings)
    names = [*families, REFERENCE]
    for variant in variants:
        if variant.name in names or variant.name in FAMILIES:
            raise ValueError(f"variant name {variant.name!r} is taken (families {FAMILIES}, {REFERENCE!r}, "
                             "other variants)")
        names.append(variant.name)
    reference = family_config(COUNT_FAMILY, **shape)
    reference = HopeConfig(**{**reference.to_diff_dict(), "cms_levels": None})      # default CMS levels
    target = meta_parameter_count(reference)
    configs = {family: family_config(family, **shape, parameters=target) for family in families}
    for variant in variants:
        configs[variant.name] = family_config(variant.family, **shape, parameters=target, overrides=variant.overrides)
    configs[REFERENCE] = matched_llama_config(reference, max_position_embeddings=max_position_embeddings)
    return configs


def named_configs(families: Sequence[str], size: str, max_position_embeddings: int) -> dict[str, PreTrainedConfig]:
    """The named configurations `<family>-<size>` of `modeling_configs/` and `transformer-<size>` as the Llama
    (their parameter counts are matched where they are made), with room for `max_position_embeddings`."""
    names = {family: f"{family}-{size}" for family in families} | {REFERENCE: f"transformer-{size}"}
    configs = {}
    for name, config_name in names.items():
        config = load_config(config_name)
        config.max_position_embeddings = max(config.max_position_embeddings, max_position_embeddings)
        configs[name] = config
    return configs


def build_model(config: PreTrainedConfig) -> torch.nn.Module:
    return HopeForCausalLM(config) if isinstance(config, HopeConfig) else LlamaForCausalLM(config)


# ------------------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(steps: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each step over `repeats` rounds after `warmup` rounds; a round runs every step once.

    Each step synchronises its device before returning.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_step(device: torch.device, dtype: torch.dtype, size: int | None = None) -> tuple[Callable[[], None], int]:
    """A square `size × size` matmul in `dtype` and its FLOPs (2 size³).

    The default size, 2048 on CPU and 8192 on CUDA, is large enough to reach the machine's GEMM peak.
    """
    size = size or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))

    def step():
        a @ b
        synchronize(device)

    return step, 2 * size**3


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of `matmul_step` alone (median of `repeats` after one warm-up)."""
    step, flops = matmul_step(device, dtype, size)
    return flops / time_round_robin({"matmul": step}, repeats, warmup=1)["matmul"]


@dataclass
class Subject:
    """One model of the run with what its steps need."""

    name: str
    config: PreTrainedConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self):
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def training_step(subject: Subject, ids: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
    """Forward + backward + AdamW step on `ids` [B, T] (labels = ids)."""

    def step():
        subject.model.train()
        with _autocast(ids.device, dtype):
            loss = subject.model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        subject.optimizer.step()
        subject.optimizer.zero_grad(set_to_none=True)
        synchronize(ids.device)

    return step


def inference_step(subject: Subject, ids: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
    """A forward without gradients or cache on `ids` [B, T], keeping the last logit."""

    @torch.no_grad()
    def step():
        subject.model.eval()
        with _autocast(ids.device, dtype):
            subject.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        synchronize(ids.device)

    return step


# ------------------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------------------

def cache_bytes(cache) -> int:
    """Bytes of every tensor a cache holds (HopeCache or a transformers cache), counted once each."""
    seen, stack = {}, [cache]
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            seen[obj.data_ptr(), obj.dtype, tuple(obj.shape)] = obj.numel() * obj.element_size()
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
            stack.extend(vars(obj).values())
    return sum(seen.values())


def _status_mib(key: str, path: str = "/proc/self/status") -> float:
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _malloc_trim() -> None:
    """Hand glibc's free heap memory back to the system (`malloc_trim(0)`; nothing where there is no glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def cpu_memory_tracking():
    """Inside: the process's resident set follows the live tensors (Linux, glibc), so the peak resident set of a
    step is its working memory: freed blocks of 64 KiB or more go back to the system at once.

    Yields `False` where that cannot be done (no glibc or no `/proc/self/clear_refs`); CPU peaks are then not
    measured. It slows allocation, so a run measures memory after every timed step. On exit the thresholds
    are set to glibc's dynamic maxima (32 MiB / 64 MiB), the steady state of a long-running process.
    """
    mmap_threshold, trim_threshold = -3, -1                       # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    try:
        libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
        _status_mib("VmHWM")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except (OSError, KeyError):
        libc = None
    if libc is None or not (libc.mallopt(mmap_threshold, 65536) and libc.mallopt(trim_threshold, 65536)):
        yield False
        return
    libc.malloc_trim(0)
    try:
        yield True
    finally:
        libc.mallopt(mmap_threshold, 32 * 2**20)
        libc.mallopt(trim_threshold, 64 * 2**20)


def step_peak_mib(step: Callable[[], None], subject: Subject, device: torch.device) -> float:
    """Peak memory of one step of `subject`, as if it ran alone: its parameters and optimiser state plus the
    largest growth of memory during the step over the memory before it.

    CUDA: `torch.cuda.max_memory_allocated` (tensors); CPU: the process's resident set (Linux VmHWM after
    `cpu_memory_tracking`; includes the allocator's and the kernels' scratch memory).
    """
    resident = sum(t.numel() * t.element_size() for t in subject.model.parameters())
    for state in subject.optimizer.state.values():
        resident += sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        growth = torch.cuda.max_memory_allocated(device) - before
    else:
        _malloc_trim()                  # free heap chunks left by earlier steps would hide this step's growth
        before = _status_mib("VmRSS") * 2**20
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                          # VmHWM := VmRSS
        step()
        growth = _status_mib("VmHWM") * 2**20 - before
    return (resident + max(growth, 0)) / 2**20


def saved_activation_bytes(subject: Subject, ids: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes that autograd keeps for the backward of a training forward on `ids` [B, T]: every distinct storage
    packed by `torch.autograd.graph.saved_tensors_hooks`, parameters excluded.

    Run in eval mode (same computation here: no dropout), so gradient checkpointing, which only acts in training
    mode, does not hide what a block saves. The bulk of a training step's memory, and linear in the tokens for
    every model here (chunk-wise memories, flash attention), so a short probe predicts a long step.
    """
    parameters = {p.untyped_storage().data_ptr() for p in subject.model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    training = subject.model.training
    subject.model.eval()
    try:
        with torch.enable_grad(), _autocast(ids.device, dtype), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            subject.model(input_ids=ids, labels=ids, use_cache=False)
    finally:
        subject.model.train(training)
    return sum(saved.values())


def available_bytes(device: torch.device) -> int:
    """Memory a step may still take: free CUDA memory, or the system's MemAvailable (Linux) on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return int(_status_mib("MemAvailable", "/proc/meminfo") * 2**20)
    except (OSError, KeyError):
        return 2**62                                              # unknown: no guard


#: A training step is skipped when its saved activations would take more than this share of the free memory.
MEMORY_SHARE = 0.6
#: Tokens of the forward that measures saved activations per token (one row of the shortest length, cut to this).
PROBE_TOKENS = 512


# ------------------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def measure_decode(subjects: Sequence[Subject], lengths: Sequence[int], steps: int, warmup: int,
                   device: torch.device, dtype: torch.dtype) -> dict[tuple[str, int], dict[str, float]]:
    """Per (model, context length): prefill a random prompt, then time single-token greedy steps (batch 1).

    The timed steps go round robin over every cell; each cell keeps its own cache.
    Returns:
        {(model, length): {"decode_ms_per_token", "cache_mib"}}.
    """
    cells = {}
    for subject in subjects:
        subject.model.eval()
        vocab = subject.config.vocab_size
        for length in lengths:
            ids = torch.randint(0, vocab, (1, length), device=device)
            with _autocast(device, dtype):
                out = subject.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cells[subject.name, length] = {"subject": subject, "cache": output_cache(out),
                                           "token": out.logits[:, -1:].argmax(-1)}
            del out

    def decode(cell):
        def step():
            with _autocast(device, dtype):
                out = cell["subject"].model(input_ids=cell["token"], **cache_argument(cell["cache"]),
                                            use_cache=True, logits_to_keep=1)
            cell["token"] = out.logits[:, -1:].argmax(-1)
            synchronize(device)
        return step

    seconds = time_round_robin({key: decode(cell) for key, cell in cells.items()}, steps, warmup)
    results = {key: {"decode_ms_per_token": 1000 * seconds[key], "cache_mib": cache_bytes(cell["cache"]) / 2**20}
               for key, cell in cells.items()}
    cells.clear()
    return results


# ------------------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------------------

def batch_for(length: int, tokens_per_step: int) -> int:
    return max(1, tokens_per_step // length)


def run_bench(
    *,
    models: Sequence[str] = ("hope", "hope-attention", "titans"),
    lengths: Sequence[int] = (512, 2048, 8192),
    size: str | None = None,
    hidden_size: int = 256,
    layers: int = 4,
    heads: int = 4,
    vocab_size: int = 8192,
    tokens_per_step: int = 2048,
    repeats: int = 3,
    warmup: int = 1,
    decode_steps: int = 16,
    parts: Sequence[str] = PARTS,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    matmul_size: int | None = None,
    gradient_checkpointing: bool = False,
    memory_implementation: str | None = None,
    variants: Sequence[Variant] = (),
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure `models`, `variants` (families with other switches, `Variant`) and a same-size Llama at `lengths`
    (see the module docstring).

    `size` (e.g. `"340m"`) takes the named configurations `<family>-<size>` and `transformer-<size>` instead of
    the bench shape (`hidden_size`, `layers`, `heads`, `vocab_size`). `gradient_checkpointing` turns it on in
    every model (per block; training steps only). `memory_implementation` (`"chunk"` or `"compiled"`) runs the
    self-modifying memories of every Hope model that way (default: each configuration's own, `"chunk"`); a
    compiled model's first steps compile a graph per batch shape, so give it `warmup` ≥ 2 (as `hope-hf bench` does).

    Returns:
        {"machine", "torch", "device", "dtype", "matmul_peak_flops", "peak_memory", "models": {name: {"parameters",
        "config"}}, "rows": one dict per (model, length)}. A row holds `model`, `length`, `batch`,
        `train_tokens_per_s`, `infer_tokens_per_s`, `decode_ms_per_token`, `cache_mib`, `train_peak_mib`,
        `infer_peak_mib`, `train_flops_per_s`, `infer_flops_per_s`, their `*_peak_fraction` against the
        `*_matmul_flops_per_s` of the same round, and the ratios to the Llama at that length (`train_ratio`,
        `infer_ratio`, `decode_ratio`), for the parts measured; `train_skipped` says why training was not run.
    """
    log = log or (lambda message: None)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"parts must be among {PARTS}, got {unknown}")
    for name, value in (("lengths", min(lengths, default=0)), ("tokens_per_step", tokens_per_step),
                        ("repeats", repeats), ("decode_steps", decode_steps)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if memory_implementation is not None and memory_implementation not in FAST_MEMORY_IMPLEMENTATIONS:
        raise ValueError(f"memory_implementation must be one of {FAST_MEMORY_IMPLEMENTATIONS} or None, "
                         f"got {memory_implementation!r}")
    families = [m for m in dict.fromkeys(models) if m != REFERENCE]
    device = torch.device(device)
    torch.manual_seed(0)
    if size is None:
        configs = bench_configs(families, hidden_size=hidden_size, layers=layers, heads=heads, vocab_size=vocab_size,
                                max_position_embeddings=max(lengths) + 1024, variants=variants)
    elif variants:
        raise ValueError(f"variants are built at the bench shape, not with size={size!r}")
    else:
        configs = named_configs(families, size, max(lengths) + 1024)
    for config in configs.values():
        if memory_implementation and isinstance(config, HopeConfig):
            config.memory_implementation = memory_implementation
    subjects = [Subject(name, config, build_model(config).to(device)) for name, config in configs.items()]
    width = max(15, *(len(name) for name in configs))           # the log's name column
    if gradient_checkpointing:
        for s in subjects:
            s.model.activation_checkpointing_enable()
    for s in subjects:
        log(f"{s.name:{width}s} {count_parameters(s.model):>12,} parameters")
    # the matmul takes a turn in every training / inference round too, so the peak is measured under the load
    # the models see: each step's fraction of peak is against its own round's matmul
    load_at_start = load_average()
    gemm, gemm_flops = matmul_step(device, dtype, matmul_size)
    alone = gemm_flops / time_round_robin({MATMUL: gemm}, 5, warmup=1)[MATMUL]
    log(f"matmul peak ({dtype}, {device.type}), alone: {alone / 1e9:.1f} GFLOP/s")
    round_peaks = []

    rows = {(s.name, n): {"model": s.name, "length": n, "batch": batch_for(n, tokens_per_step)}
            for n in lengths for s in subjects}
    vocab = min(s.config.vocab_size for s in subjects)
    inputs = {n: torch.randint(0, vocab, (batch_for(n, tokens_per_step), n), device=device) for n in lengths}
    # saved activations per token, from a short forward: a training step that would not fit is skipped, not run
    per_token = {}
    if "train" in parts or "memory" in parts:
        # at most PROBE_TOKENS: a probe as long as the step would hold the very memory the guard protects
        probe = inputs[min(lengths)][:1, :PROBE_TOKENS]
        for s in subjects:
            per_token[s.name] = saved_activation_bytes(s, probe, dtype) / probe.numel()
            log(f"{s.name:{width}s} saved activations {per_token[s.name] * 1024 / 2**20:8.1f} MiB per 1K tokens")
    trainable = {}
    for n in lengths:
        trainable[n] = []
        for s in subjects:
            need = per_token[s.name] * inputs[n].numel() if per_token else 0
            if gradient_checkpointing:
                need /= s.config.num_hidden_layers                # one block's activations at a time
            if need > MEMORY_SHARE * available_bytes(device):
                rows[s.name, n]["train_skipped"] = (f"needs ~{need / 2**30:.1f} GiB of saved activations, "
                                                    f"{available_bytes(device) / 2**30:.1f} GiB free")
                log(f"{s.name:{width}s} T={n:6d} train skipped: {rows[s.name, n]['train_skipped']}")
            else:
                trainable[n].append(s.name)
    for n in lengths:
        ids, tokens = inputs[n], inputs[n].numel()
        for part, make in (("train", training_step), ("infer", inference_step)):
            if part not in parts:
                continue
            measured = [s for s in subjects if part == "infer" or s.name in trainable[n]]
            seconds = time_round_robin({**{s.name: make(s, ids, dtype) for s in measured}, MATMUL: gemm}, repeats,
                                       warmup)
            round_peaks.append(gemm_flops / seconds[MATMUL])
            for s in measured:
                row = rows[s.name, n]
                flops = (training_flops(s.config, *ids.shape) if part == "train"
                         else sum(forward_flops(s.config, *ids.shape, logits=1).values()))
                row[f"{part}_tokens_per_s"] = tokens / seconds[s.name]
                row[f"{part}_flops_per_s"] = flops / seconds[s.name]
                log(f"{s.name:{width}s} T={n:6d} {part:5s} {row[f'{part}_tokens_per_s']:10.0f} tok/s "
                    f"{row[f'{part}_flops_per_s'] / 1e9:7.2f} GFLOP/s (matmul: {round_peaks[-1] / 1e9:.1f})")
                row[f"{part}_matmul_flops_per_s"] = round_peaks[-1]
                row[f"{part}_peak_fraction"] = row[f"{part}_flops_per_s"] / round_peaks[-1]
    peak = statistics.median(round_peaks) if round_peaks else alone
    if "decode" in parts:
        for (name, n), cell in measure_decode(subjects, lengths, decode_steps, warmup, device, dtype).items():
            rows[name, n].update(cell)
            log(f"{name:{width}s} T={n:6d} decode {cell['decode_ms_per_token']:8.2f} ms/token  cache "
                f"{cell['cache_mib']:.2f} MiB")
    memory = None
    if "memory" in parts:                         # last: the CPU tracking slows allocation
        with cpu_memory_tracking() if device.type == "cpu" else contextlib.nullcontext(True) as tracking:
            memory = None
            if tracking:
                memory = ("CUDA max_memory_allocated" if device.type == "cuda" else
                          "CPU resident set (VmHWM), glibc returning freed blocks >= 64 KiB")
            for n in lengths if tracking else ():
                for s in subjects:
                    row = rows[s.name, n]
                    for part, make in (("train", training_step), ("infer", inference_step)):
                        if part == "infer" or s.name in trainable[n]:
                            row[f"{part}_peak_mib"] = step_peak_mib(make(s, inputs[n], dtype), s, device)
                    log(f"{s.name:{width}s} T={n:6d} peak MiB: train {row.get('train_peak_mib', float('nan')):.0f}, "
                        f"inference {row['infer_peak_mib']:.0f}")
    for (name, n), row in rows.items():
        ref = rows[REFERENCE, n]
        for key, ratio in (("train_tokens_per_s", "train_ratio"), ("infer_tokens_per_s", "infer_ratio"),
                           ("decode_ms_per_token", "decode_ratio")):
            if key in row and key in ref:
                row[ratio] = row[key] / ref[key]
    return {
        "machine": machine_description(device), "torch": torch.__version__, "device": device.type,
        "dtype": str(dtype).removeprefix("torch."), "tokens_per_step": tokens_per_step, "repeats": repeats,
        "warmup": warmup, "decode_steps": decode_steps, "gradient_checkpointing": gradient_checkpointing,
        "memory_implementation": memory_implementation or "chunk",
        "variants": {v.name: {"family": v.family, "overrides": v.overrides} for v in variants},
        "matmul_peak_flops": peak, "matmul_peak_flops_alone": alone, "matmul_peak_flops_by_round": round_peaks,
        "load_average": {"start": load_at_start, "end": load_average()},
        "peak_memory": memory,
        "models": {s.name: {"parameters": count_parameters(s.model), "config": s.config.to_diff_dict(),
                            "saved_activation_bytes_per_token": per_token.get(s.name)} for s in subjects},
        "rows": list(rows.values()),
    }


# ------------------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------------------

def _cell(row: dict, key: str, fmt: str, ratio: str | None = None) -> str:
    if key not in row:
        return "skipped (memory)" if key.startswith("train") and "train_skipped" in row else "–"
    text = format(row[key], fmt)
    return f"{text} ({row[ratio]:.2f}x)" if ratio and ratio in row else text


def markdown_table(result: dict) -> str:
    """The rows of `run_bench` as the Markdown table of the README's Performance section."""
    lines = ["| model | T | batch | train tok/s (vs llama) | inference tok/s (vs llama) | decode ms/token (vs llama) "
             "| train GFLOP/s (% peak) | train peak MiB | inference peak MiB | cache MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: (list(result["models"]).index(r["model"]), r["length"])):
        flops = "–"
        if "train_flops_per_s" in r:
            flops = f"{r['train_flops_per_s'] / 1e9:.2f} ({100 * r['train_peak_fraction']:.1f}%)"
        batch = r["batch"] if "train_tokens_per_s" in r or "infer_tokens_per_s" in r else "–"
        lines.append(f"| {r['model']} | {r['length']} | {batch} | {_cell(r, 'train_tokens_per_s', '.0f', 'train_ratio')} "
                     f"| {_cell(r, 'infer_tokens_per_s', '.0f', 'infer_ratio')} "
                     f"| {_cell(r, 'decode_ms_per_token', '.2f', 'decode_ratio')} | {flops} "
                     f"| {_cell(r, 'train_peak_mib', '.0f')} | {_cell(r, 'infer_peak_mib', '.0f')} "
                     f"| {_cell(r, 'cache_mib', '.2f')} |")
    return "\n".join(lines)


def summary(result: dict) -> str:
    """The header of the report: machine, peak, parameters, and how decoding latency grows with the context."""
    params = ", ".join(f"{name} {m['parameters']:,}" for name, m in result["models"].items())
    lines = [f"machine: {result['machine']}; torch {result['torch']}; {result['dtype']}; Hope memory: "
             f"{result.get('memory_implementation', 'chunk')}",
             f"matmul peak: {result['matmul_peak_flops'] / 1e9:.1f} GFLOP/s (median over the timed rounds, each step's "
             f"% of peak is against its own round; {result['matmul_peak_flops_alone'] / 1e9:.1f} alone at the start); "
             f"parameters: {params}",
             f"tokens per step: {result['tokens_per_step']} (batch = that // T, at least 1); medians of "
             f"{result['repeats']} steps after {result['warmup']} warm-up, {result['decode_steps']} decoding steps",
             f"peak memory: {result['peak_memory'] or 'not measured'}"]
    load = result.get("load_average") or {}
    if load.get("start") is not None and load.get("end") is not None:
        lines.append(f"load average (1 min) at the start {load['start']:.2f}, at the end {load['end']:.2f} "
                     f"(above the thread count, other work shared the machine: compare ratios, not rates)")
    saved = [f"{name} {m['saved_activation_bytes_per_token'] * 1024 / 2**20:.0f}" for name, m in result["models"].items()
             if m.get("saved_activation_bytes_per_token")]
    if saved:
        lines.append(f"saved activations of a training step, MiB per 1K tokens: {', '.join(saved)}")
    lines += [f"{r['model']} at {r['length']}: training skipped, {r['train_skipped']}" for r in result["rows"]
              if "train_skipped" in r]
    rows = [r for r in result["rows"] if "decode_ms_per_token" in r]
    lengths = sorted({r["length"] for r in rows})
    if len(lengths) > 1:
        for name in result["models"]:
            by_length = {r["length"]: r["decode_ms_per_token"] for r in rows if r["model"] == name}
            lines.append(f"{name}: decode latency at {lengths[-1]} / at {lengths[0]} = "
                         f"{by_length[lengths[-1]] / by_length[lengths[0]]:.2f}x")
    return "\n".join(lines)


def machine_description(device: str | torch.device) -> str:
    """Processor (its model name where `/proc/cpuinfo` gives it), thread count and device, for the record."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {platform.machine()} host"
    name = cpu_model_name()
    cpu = f"{name} ({platform.machine()})" if name else platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, cpu"


def cpu_model_name() -> str | None:
    """The processor's model name from `/proc/cpuinfo` (Linux; `None` where there is none)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return None


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes), where the OS reports one: above the bench's thread
    count, other work was sharing the cores."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


__all__ = ["FAMILIES", "MEMORY_SHARE", "PARTS", "REFERENCE", "Variant", "available_bytes", "bench_configs",
           "cache_bytes", "cpu_model_name", "family_config", "markdown_table", "matmul_peak", "matmul_step",
           "measure_decode", "named_configs", "run_bench", "saved_activation_bytes", "step_peak_mib", "summary",
           "time_round_robin"]
