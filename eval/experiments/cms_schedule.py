"""The CMS update schedule at small scale, on Hope-Attention (`hope-attention-tiny`, ~2M parameters).

Why this study: at the ~2M size Hope-Attention (softmax attention + a CMS of three levels with
`update_period` 1, 4, 16) ends far behind a Transformer of the same size trained on the same tokens (LM
comparison), and on Hope the ablation rows without the schedule beat the base. In a run of 152 optimiser
steps the levels of period 4 and 16 take 38 and 9 steps: are the slow levels simply starved? Hope-Attention
trains about six times faster than Hope on the CPU, so the question is asked here, one knob at a time.

Every row is `modeling_configs/hope-attention-tiny.json` with its CMS overridden (the total width 432 stays
the same, so every row has the same parameter count: checked within 3% before training), trained like every
other study (`common.py`):

    hope-attention      the base (periods 1, 4, 16): the LM comparison's run, taken when it is the same training
    periods-1-1-1       every level steps every step (no schedule)
    periods-1-2-4       a gentler schedule
    lr-by-sqrt-period   periods 1, 4, 16, each level's outer learning rate multiplied by sqrt(period)
    lr-by-period        periods 1, 4, 16, each level's outer learning rate multiplied by its period
    one-level           one level of width 432, period 1 (the Transformer's MLP, in Hope's block)

    python eval/experiments/cms_schedule.py --list
    python eval/experiments/cms_schedule.py --jobs 2 --max-minutes 60      # rerun the same command to continue
    python eval/experiments/cms_schedule.py --table                        # table + validation_loss.png
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

STUDY = "cms_schedule"
BASE = "hope-attention-tiny"
LEVEL_WIDTH = 144        # hope-attention-tiny: three CMS levels of width 144 (432 in all)
DEFAULT_TOKENS = 2_500_000
BASE_PERIODS = (1, 4, 16)


#: name → (label, HopeConfig overrides of hope-attention-tiny, `common.Run` fields). The first row is the base.
ROWS: dict[str, tuple[str, dict, dict]] = {
    "hope-attention": ("Hope-Attention (base: periods 1, 4, 16)", {}, {}),
    "periods-1-1-1": ("periods 1, 1, 1 (no schedule)",
                      {"cms_levels": common.cms_levels([(LEVEL_WIDTH, 1)] * 3)}, {}),
    "periods-1-2-4": ("periods 1, 2, 4",
                      {"cms_levels": common.cms_levels([(LEVEL_WIDTH, p) for p in (1, 2, 4)])}, {}),
    "lr-by-sqrt-period": ("periods 1, 4, 16, outer lr x sqrt(period)", {},
                          {"level_lr_scale": [math.sqrt(p) for p in BASE_PERIODS]}),
    "lr-by-period": ("periods 1, 4, 16, outer lr x period", {},
                     {"level_lr_scale": [float(p) for p in BASE_PERIODS]}),
    "one-level": ("one level of width 432, period 1",
                  {"cms_levels": common.cms_levels([(3 * LEVEL_WIDTH, 1)])}, {}),
}


def runs(data: str = "embedded") -> list[common.Run]:
    """One run per row of `ROWS`, named `<row>@<corpus>`."""
    tag = common.corpus_tag(data)
    return [common.Run(name=f"{row}@{tag}", config=BASE, data=data, overrides=overrides, label=label,
                       group=f"cms@{tag}", tokens=DEFAULT_TOKENS, **fields)
            for row, (label, overrides, fields) in ROWS.items()]


def main(argv: list[str] | None = None) -> int:
    title = f"CMS schedule ({BASE}): validation loss vs training tokens"
    return common.variants_main(STUDY, BASE, title, runs, __doc__, argv, __file__)


if __name__ == "__main__":
    raise SystemExit(main())
