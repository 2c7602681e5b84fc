"""The paper's ablation (Table 6) and the knobs it leaves open, on Hope at the ~2M size (`hope-r2-tiny`, 2.5M tokens)
and, with `--size small`, at ~6M (`hope-r2-small`, 5M tokens: the study `ablations_small`, its own results folder).
The base is the studies' Hope, memory expansion r = 2 (`common.STUDY_HOPE`); the shipped `hope-tiny` / `hope-small`
are this study's rows `expansion-1-cms-132` / `expansion-1-cms-164` (r = 1 at the base's count), its finding.

Every row is the base's `modeling_configs/` file with a few `HopeConfig` fields overridden, trained on the
same tokens in the same order with the same optimiser and schedule as every other row (`common.py`).
Some rows change the parameter count (`OWN_COUNT_ROWS`: no α memory, static η/α, a narrower or wider memory); the
table shows each row's count and its difference from `hope` (the base), so read those rows as "this design at its
own size", not at equal parameters. Every other row keeps the base's count (rows that only move width between CMS
levels, or take CMS levels of the width that restores it).

Table 6 rows: w/o DGD (plain GD inner updates), w/o momentum, w/o weight decay (α ≡ 1), w/o CMS (one
level as wide as the three), static k, static v, adaptive q; and static η/α (`adaptive_rates=False`) and a static
input projection before the per-head memories (`input_projection=True`, at the base's parameter count).
The base row is the LM comparison's `hope-tiny` run on the same corpus: when `lm_comparison.py` has its result in the
same results folder, made with the same config, corpus, settings and dtype, it is taken (marked `same_training_as`)
instead of training the same model twice.
Static η/α at the base's parameter count (CMS levels of 124 at tiny), alone and with C_o 32: the cheapest settings
measured (`hope-hf bench --variant`), asked whether they keep the quality. At small a head's memories hold half the
weights of a D × D matrix, so static k / static v / adaptive q take CMS levels that restore the base's count.
Static η/α with memory expansion r = 1 at the base's count: the two cheapest switches together. r = 1 with C_o 32 at the
base's count: the cheapest setting that keeps every mechanism of the paper.
Open knobs: memory expansion r (1, 4; base 2; r = 1 also at the base's count), the chunk sizes C_o/C_m (8/32, 16/16,
32/64, 32/128; base 16/64), CMS levels and periods (2, 4 levels; periods all 1; 1/2/4; 1/4/16 with each level's outer
learning rate multiplied by its period), the inner learning-rate range (eta_max, eta_init), eta_init 0.3 with static
k and v (C_m 64 and 16: the setting that binds pairs in `associative_recall.py`; static k and v alone tells the two
changes apart), the retention-gate initialisation alpha_init (0.9, 0.99; base 0.999).

    python eval/experiments/ablations.py --list                     # rows with parameter counts
    python eval/experiments/ablations.py --jobs 8 --max-minutes 9   # rerun the same command to continue
    python eval/experiments/ablations.py --table                    # table + validation_loss.png
    python eval/experiments/ablations.py --size small --only static-k@embedded --max-minutes 170   # ~6M, one row
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from hope_hf.baselines import cms_width_for, meta_parameter_count, with_cms_width  # noqa: E402

STUDY = "ablations"
#: size → (the base's modeling config, training tokens of every row). `tiny` (~2M) is the study so far; `small` (~6M,
#: the LM comparison's larger size) writes its results as the study `ablations_small`.
SIZES: dict[str, tuple[str, int]] = {size: (common.STUDY_HOPE[size], tokens)
                                     for size, tokens in (("tiny", 2_500_000), ("small", 5_000_000))}
PERIODS = (1, 4, 16)     # the base's CMS: three levels of one width with these update periods
#: the rows measured at their own parameter count (a design with fewer or more weights than the base, as the paper's
#: rows are); every other row holds the base's count within 0.5% (tested)
OWN_COUNT_ROWS = ("no-weight-decay", "static-rates", "expansion-1", "expansion-4")


def _matched_cms(overrides: dict, base: dict, target: int) -> list[dict]:
    """The base's CMS levels, all of the width that brings `base` with `overrides` back to `target` parameters
    (`hope_hf.baselines.cms_width_for`)."""
    config = common.build_config(common.Run(name="matched", config={**base, **overrides}))
    return with_cms_width(config, cms_width_for(config, target)).cms_levels


def rows(size: str = "tiny") -> dict[str, tuple[str, dict, dict]]:
    """name → (label, HopeConfig overrides of the size's base, `common.Run` fields). The first row is the base.

    Widths follow the base's CMS width W (96 tiny, 128 small): rows that move width between levels keep the total 3W;
    rows that add or remove weights elsewhere and say "CMS levels of N" take the width that restores the base's
    parameter count (`_matched_cms`)."""
    from hope_hf.model_configs import load_config

    base = load_config(SIZES[size][0]).to_dict()
    width = base["cms_levels"][0]["intermediate_size"]
    target = meta_parameter_count(common.build_config(common.Run(name="base", config=base)))
    input_projection = {"input_projection": True}
    input_projection_cms = _matched_cms(input_projection, base, target)
    static_rates = {"adaptive_rates": False}
    static_kv = {"adaptive_k": False, "adaptive_v": False}
    static_rates_cms = _matched_cms(static_rates, base, target)
    static_rates_r1 = {**static_rates, "memory_expansion": 1}
    static_rates_r1_cms = _matched_cms(static_rates_r1, base, target)
    expansion_1_cms = _matched_cms({"memory_expansion": 1}, base, target)

    def levels(*widths_and_periods) -> dict:
        return {"cms_levels": common.cms_levels(widths_and_periods)}

    def cms_width(levels_: list[dict]) -> int:
        return levels_[0]["intermediate_size"]

    def at_base_count(label: str, overrides: dict) -> tuple[str, dict, dict]:
        """A row that swaps a static D × D projection for per-head memories or back: the H memories hold
        H · 2·r·d² = 2r·D²/H weights, as many as the matrix when H = 2r (tiny), half as many at small (H = 8). As is
        where the count stays the base's, else with CMS levels of the width that restores it."""
        cms = _matched_cms(overrides, base, target)
        if cms_width(cms) == width:
            return label, overrides, {}
        return f"{label} (CMS levels of {cms_width(cms)})", {**overrides, "cms_levels": cms}, {}

    return {
        "hope": (f"Hope (base: {SIZES[size][0]})", {}, {}),
        # Table 6
        "no-dgd": ("w/o DGD (plain GD)", {"inner_optimizer": "gd"}, {}),
        "no-momentum": ("w/o momentum", {"inner_momentum": False}, {}),
        "no-weight-decay": ("w/o weight decay (alpha = 1)", {"inner_weight_decay": False}, {}),
        "no-cms": (f"w/o CMS (one level, width {3 * width})", levels((3 * width, 1)), {}),
        "static-k": at_base_count("static k", {"adaptive_k": False}),
        "static-v": at_base_count("static v", {"adaptive_v": False}),
        "adaptive-q": at_base_count("adaptive q", {"adaptive_q": True}),
        # beyond Table 6: static eta_t, alpha_t (linear in x, as in Titans), the one static part the Titans ablation
        # has and no row above removes; then the same at the base's parameter count, alone and with C_o 32: the two
        # settings that cost least time (`hope-hf bench --variant`: 1.56x and 1.60x the base's training tokens/s)
        "static-rates": ("static eta, alpha (linear projections)", static_rates, {}),
        f"static-rates-cms-{cms_width(static_rates_cms)}": (
            f"static eta, alpha, CMS levels of {cms_width(static_rates_cms)}",
            {**static_rates, "cms_levels": static_rates_cms}, {}),
        f"static-rates-cms-{cms_width(static_rates_cms)}-c32": (
            f"static eta, alpha, CMS levels of {cms_width(static_rates_cms)}, C_o/C_m = 32/64",
            {**static_rates, "projection_chunk_size": 32, "cms_levels": static_rates_cms}, {}),
        # the two cheapest switches together (static eta/alpha and r = 1: 0.54x the Llama's training tokens/s at the
        # bench shape, against Hope's 0.25x, `hope-hf bench --variant`), at the base's parameter count
        f"static-rates-r1-cms-{cms_width(static_rates_r1_cms)}": (
            f"static eta, alpha, memory expansion r = 1, CMS levels of {cms_width(static_rates_r1_cms)}",
            {**static_rates_r1, "cms_levels": static_rates_r1_cms}, {}),
        # beyond the paper: a static D x D map before the convolution, so each head's memories read all channels
        # (without it head i's memories see channels i*d..(i+1)*d only); narrower CMS levels pay for its weights
        "input-projection": (f"input projection W_x (CMS levels of {cms_width(input_projection_cms)})",
                             {**input_projection, "cms_levels": input_projection_cms}, {}),
        # memory expansion r (h = r d)
        "expansion-1": ("memory expansion r = 1", {"memory_expansion": 1}, {}),
        "expansion-4": ("memory expansion r = 4", {"memory_expansion": 4}, {}),
        f"expansion-1-cms-{cms_width(expansion_1_cms)}": (
            f"memory expansion r = 1, CMS levels of {cms_width(expansion_1_cms)}",
            {"memory_expansion": 1, "cms_levels": expansion_1_cms}, {}),
        # r = 1 with C_o 32, at the base's count: every one of the paper's mechanisms kept, the cheapest such setting
        # measured (0.54x the Llama's training tokens/s at the bench shape under load, Hope 0.30x; session 15)
        f"expansion-1-cms-{cms_width(expansion_1_cms)}-c32": (
            f"memory expansion r = 1, CMS levels of {cms_width(expansion_1_cms)}, C_o/C_m = 32/64",
            {"memory_expansion": 1, "projection_chunk_size": 32, "cms_levels": expansion_1_cms}, {}),
        # chunk sizes C_o / C_m
        "chunks-8-32": ("chunks C_o/C_m = 8/32", {"projection_chunk_size": 8, "memory_chunk_size": 32}, {}),
        "chunks-16-16": ("chunks C_o/C_m = 16/16", {"memory_chunk_size": 16}, {}),
        "chunks-32-64": ("chunks C_o/C_m = 32/64", {"projection_chunk_size": 32}, {}),
        "chunks-32-128": ("chunks C_o/C_m = 32/128", {"projection_chunk_size": 32, "memory_chunk_size": 128}, {}),
        # CMS levels and periods (same total width 3W)
        "cms-2-levels": ("CMS 2 levels (periods 1, 4)", levels((3 * width // 2, 1), (3 * width // 2, 4)), {}),
        "cms-4-levels": ("CMS 4 levels (periods 1, 4, 16, 64)", levels(*[(3 * width // 4, p) for p in (1, 4, 16, 64)]),
                         {}),
        "cms-periods-1-1-1": ("CMS periods 1, 1, 1 (no schedule)", levels(*[(width, 1)] * 3), {}),
        "cms-periods-1-2-4": ("CMS periods 1, 2, 4", levels(*[(width, p) for p in (1, 2, 4)]), {}),
        # a level that steps every P optimiser steps on the summed gradients of the period moves like P plain steps
        # under SGD, but AdamW normalises the sum: scaling its learning rate by P gives it back the distance
        "cms-lr-by-period": ("CMS periods 1, 4, 16, outer lr x period", {},
                             {"level_lr_scale": [float(p) for p in PERIODS]}),
        # inner learning rate eta_t = eta_max * sigmoid(.), starting at eta_init
        "eta-init-0.01": ("eta_init 0.01", {"eta_init": 0.01}, {}),
        "eta-init-0.1": ("eta_init 0.1", {"eta_init": 0.1}, {}),
        "eta-max-0.1": ("eta_max 0.1 (eta_init 0.03)", {"eta_max": 0.1}, {}),
        # the setting that binds key-value pairs in the associative-recall study (`associative_recall.py`): eta_init
        # 0.3 with static k and v, at the shipped C_m 64 and at C_m 16 (where a query can read its pairs' chunk), and
        # static k and v at the shipped eta_init (0.03) to tell the two changes apart
        "static-kv": at_base_count("static k and v", static_kv),
        "eta-init-0.3-static-kv": at_base_count("eta_init 0.3, static k and v", {**static_kv, "eta_init": 0.3}),
        "eta-init-0.3-static-kv-c16": at_base_count("eta_init 0.3, static k and v, C_o/C_m = 16/16",
                                                    {**static_kv, "eta_init": 0.3, "memory_chunk_size": 16}),
        # retention gate alpha_t at initialisation
        "alpha-init-0.9": ("alpha_init 0.9", {"alpha_init": 0.9}, {}),
        "alpha-init-0.99": ("alpha_init 0.99", {"alpha_init": 0.99}, {}),
    }


def runs(data: str = "embedded", size: str = "tiny") -> list[common.Run]:
    """One run per row of `rows(size)`, named `<row>@<corpus>`."""
    tag = common.corpus_tag(data)
    base, tokens = SIZES[size]
    return [common.Run(name=f"{row}@{tag}", config=base, data=data, overrides=overrides, label=label, tokens=tokens,
                       **fields) for row, (label, overrides, fields) in rows(size).items()]


def main(argv: list[str] | None = None) -> int:
    return common.variants_main(STUDY, {size: f"hope-{size}" for size in SIZES},      # the LM comparison's Hope runs
                                "Hope (r = 2) ablations ({base}): validation loss vs training tokens", runs, __doc__,
                                argv, __file__)


if __name__ == "__main__":
    raise SystemExit(main())
