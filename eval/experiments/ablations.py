"""The paper's ablation (Table 6) and the knobs it leaves open, on Hope at the ~2M size (`hope-tiny`).

Every row is `modeling_configs/hope-tiny.json` with a few `HopeConfig` fields overridden, trained on the
same tokens in the same order with the same optimiser and schedule as every other row (`common.py`).
Some rows change the parameter count (a static projection has fewer weights than a memory, a wider
memory more); the table shows each row's count and its difference from `hope` (the base), so read
those rows as "this design at its own size", not at equal parameters. Rows that only move width between
CMS levels keep the count equal.

Table 6 rows: w/o DGD (plain GD inner updates), w/o momentum, w/o weight decay (α ≡ 1), w/o CMS (one
level as wide as the three), static k, static v, adaptive q; and static η/α (`adaptive_rates=False`) and a static
input projection before the per-head memories (`input_projection=True`, at the base's parameter count).
The base row is the LM comparison's `hope-tiny` run on the same corpus: when `lm_comparison.py` has its result in the
same results folder, made with the same config, corpus, settings and dtype, it is taken (marked `same_training_as`)
instead of training the same model twice.
Static η/α at the base's parameter count (CMS levels of 124), alone and with C_o 32: the cheapest settings measured
(`hope-hf bench --variant`), asked whether they keep the quality.
Open knobs: memory expansion r (1, 4; base 2), the chunk sizes C_o/C_m (8/32, 16/16, 32/64, 32/128; base 16/64), CMS
levels and periods (2, 4 levels; periods all 1; 1/2/4; 1/4/16 with each level's outer learning rate multiplied by
its period), the inner learning-rate range (eta_max, eta_init),
the retention-gate initialisation alpha_init (0.9, 0.99; base 0.999).

    python eval/experiments/ablations.py --list                     # rows with parameter counts
    python eval/experiments/ablations.py --jobs 8 --max-minutes 9   # rerun the same command to continue
    python eval/experiments/ablations.py --table                    # table + validation_loss.png
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

STUDY = "ablations"
BASE = "hope-tiny"
BASE_WIDTH = 96          # hope-tiny: three CMS levels of width 96 (288 in all)
DEFAULT_TOKENS = 2_500_000
#: CMS levels of 124 (periods 1, 4, 16): what static eta / alpha save, spent on the CMS (the base's count, +0.05%)
WIDER_CMS = common.cms_levels([(124, 1), (124, 4), (124, 16)])


#: name → (label, HopeConfig overrides of hope-tiny). The first row is the base.
ROWS: dict[str, tuple[str, dict]] = {
    "hope": ("Hope (base: hope-tiny)", {}),
    # Table 6
    "no-dgd": ("w/o DGD (plain GD)", {"inner_optimizer": "gd"}),
    "no-momentum": ("w/o momentum", {"inner_momentum": False}),
    "no-weight-decay": ("w/o weight decay (alpha = 1)", {"inner_weight_decay": False}),
    "no-cms": ("w/o CMS (one level, width 288)", {"cms_levels": common.cms_levels([(3 * BASE_WIDTH, 1)])}),
    "static-k": ("static k", {"adaptive_k": False}),
    "static-v": ("static v", {"adaptive_v": False}),
    "adaptive-q": ("adaptive q", {"adaptive_q": True}),
    # beyond Table 6: static eta_t, alpha_t (linear in x, as in Titans), the one static part the Titans ablation has
    # and no row above removes
    "static-rates": ("static eta, alpha (linear projections)", {"adaptive_rates": False}),
    # the same at the base's parameter count (CMS levels of 124: +0.05%), and with C_o 32: the two settings that
    # cost least time (`hope-hf bench --variant`: 1.56x and 1.60x the base's training tokens/s at 2048 tokens)
    "static-rates-cms-124": ("static eta, alpha, CMS levels of 124",
                             {"adaptive_rates": False, "cms_levels": WIDER_CMS}),
    "static-rates-cms-124-c32": ("static eta, alpha, CMS levels of 124, C_o/C_m = 32/64",
                                 {"adaptive_rates": False, "projection_chunk_size": 32, "cms_levels": WIDER_CMS}),
    # beyond the paper: a static D x D map before the convolution, so each head's memories read all channels (without
    # it head i's memories see channels i*d..(i+1)*d only); CMS levels of 82 pay for its 4 x 128^2 weights
    "input-projection": ("input projection W_x (CMS levels of 82)",
                         {"input_projection": True, "cms_levels": common.cms_levels([(82, 1), (82, 4), (82, 16)])}),
    # memory expansion r (h = r d)
    "expansion-1": ("memory expansion r = 1", {"memory_expansion": 1}),
    "expansion-4": ("memory expansion r = 4", {"memory_expansion": 4}),
    # chunk sizes C_o / C_m
    "chunks-8-32": ("chunks C_o/C_m = 8/32", {"projection_chunk_size": 8, "memory_chunk_size": 32}),
    "chunks-16-16": ("chunks C_o/C_m = 16/16", {"memory_chunk_size": 16}),
    "chunks-32-64": ("chunks C_o/C_m = 32/64", {"projection_chunk_size": 32}),
    "chunks-32-128": ("chunks C_o/C_m = 32/128", {"projection_chunk_size": 32, "memory_chunk_size": 128}),
    # CMS levels and periods (same total width 288)
    "cms-2-levels": ("CMS 2 levels (periods 1, 4)", {"cms_levels": common.cms_levels([(144, 1), (144, 4)])}),
    "cms-4-levels": ("CMS 4 levels (periods 1, 4, 16, 64)",
                     {"cms_levels": common.cms_levels([(72, 1), (72, 4), (72, 16), (72, 64)])}),
    "cms-periods-1-1-1": ("CMS periods 1, 1, 1 (no schedule)", {"cms_levels": common.cms_levels([(96, 1)] * 3)}),
    "cms-periods-1-2-4": ("CMS periods 1, 2, 4", {"cms_levels": common.cms_levels([(96, 1), (96, 2), (96, 4)])}),
    "cms-lr-by-period": ("CMS periods 1, 4, 16, outer lr x period", {}),
    # inner learning rate eta_t = eta_max * sigmoid(.), starting at eta_init
    "eta-init-0.01": ("eta_init 0.01", {"eta_init": 0.01}),
    "eta-init-0.1": ("eta_init 0.1", {"eta_init": 0.1}),
    "eta-max-0.1": ("eta_max 0.1 (eta_init 0.03)", {"eta_max": 0.1}),
    # retention gate alpha_t at initialisation
    "alpha-init-0.9": ("alpha_init 0.9", {"alpha_init": 0.9}),
    "alpha-init-0.99": ("alpha_init 0.99", {"alpha_init": 0.99}),
}


#: Rows that change the outer loop rather than the config: row → `common.Run` fields. A level that steps every P
#: optimiser steps on the summed gradients of the period moves like P plain steps under SGD, but AdamW normalises
#: the sum: scaling its learning rate by P gives it back the distance.
RUN_FIELDS: dict[str, dict] = {"cms-lr-by-period": {"level_lr_scale": [1.0, 4.0, 16.0]}}


def runs(data: str = "embedded") -> list[common.Run]:
    """One run per row of `ROWS`, named `<row>@<corpus>`."""
    tag = common.corpus_tag(data)
    return [common.Run(name=f"{row}@{tag}", config=BASE, data=data, overrides=overrides, label=label,
                       tokens=DEFAULT_TOKENS, **RUN_FIELDS.get(row, {})) for row, (label, overrides) in ROWS.items()]


def main(argv: list[str] | None = None) -> int:
    title = f"Hope ablations ({BASE}): validation loss vs training tokens"
    return common.variants_main(STUDY, BASE, title, runs, __doc__, argv, __file__)


if __name__ == "__main__":
    raise SystemExit(main())
