"""The paper's reported REC / RES numbers, shipped as data for ``localize reproduce`` to print beside ours.

Source: Seil Kang, Jinyeong Kim, Junhyeok Kim, Seong Jae Hwang, "Your Large Vision-Language Model Only Needs A Few
Attention Heads For Visual Grounding", CVPR 2025 (arXiv:2503.06287). Table 1: REC, Acc@0.5 (%). Table 2: RES (%).

STATUS: the values are NOT filled in. The paper could not be read where this file was written (no network; the stored
copies searched -- the arXiv HTML page's opening, the public copies of the authors' code
``aysanaghazadeh/LocalizationHeads`` and ``liu-hanyu-97/LocalizationHeads`` (READMEs) and pages citing the paper --
hold no table values), and numbers are never typed from memory. Every value is ``None`` until someone copies it from
the paper; ``localize reproduce`` then prints :data:`NOT_AVAILABLE` in its place. To fill a row, replace the ``None``
values with the percentages of the paper's row for that model and set ``filled_from`` to the table it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAPER = (
    'Kang, Kim, Kim, Hwang, "Your Large Vision-Language Model Only Needs A Few Attention Heads For Visual '
    'Grounding", CVPR 2025, arXiv:2503.06287'
)
NOT_AVAILABLE = "not available offline; fill from the paper"
# The eight evaluation splits, in the paper's column order.
SPLITS: tuple[tuple[str, str], ...] = (
    ("refcoco", "val"),
    ("refcoco", "testA"),
    ("refcoco", "testB"),
    ("refcoco+", "val"),
    ("refcoco+", "testA"),
    ("refcoco+", "testB"),
    ("refcocog", "val"),
    ("refcocog", "test"),
)
# Metric keys of a paper row -> the table that reports them.
TABLES = {"acc@0.5": "Table 1 (REC, Acc@0.5)", "ciou": "Table 2 (RES, cIoU)", "miou": "Table 2 (RES, mIoU)"}


def _empty() -> dict[tuple[str, str], float | None]:
    return dict.fromkeys(SPLITS)


@dataclass(frozen=True)
class PaperRow:
    """One model's row of the paper's tables; values in percent, ``None`` where not (yet) transcribed."""

    model: str  # as the paper names it
    aliases: tuple[str, ...]  # our aliases and hub ids that are this model
    values: dict[str, dict[tuple[str, str], float | None]] = field(
        default_factory=lambda: {metric: _empty() for metric in TABLES}
    )
    source: str = PAPER
    filled_from: str | None = None  # e.g. "Tables 1 and 2 of the CVPR 2025 paper"; None while empty
    note: str = NOT_AVAILABLE

    def value(self, metric: str, dataset: str, split: str) -> float | None:
        """The paper's value (percent) for ``metric`` on ``dataset``/``split``, or None."""
        return self.values.get(metric, {}).get((dataset, split))

    @property
    def available(self) -> bool:
        """Whether any value has been filled in."""
        return any(v is not None for table in self.values.values() for v in table.values())


# Heads and settings of these rows are in heads/registry.py; only LLaVA-1.5 is listed because the toolkit knows its
# published heads. Other models of the paper's tables can be added the same way.
PAPER_RESULTS: dict[str, PaperRow] = {
    "llava-1.5-7b": PaperRow(
        model="LLaVA-1.5-7B",
        aliases=("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", "liuhaotian/llava-v1.5-7b"),
    ),
    "llava-1.5-13b": PaperRow(
        model="LLaVA-1.5-13B",
        aliases=("llava-1.5-13b", "llava-hf/llava-1.5-13b-hf", "liuhaotian/llava-v1.5-13b"),
    ),
}


def paper_row(model: str) -> PaperRow | None:
    """The paper's row for a model alias or hub id (case-insensitive), or None when the paper has none listed."""
    key = str(model).strip().rstrip("/").lower()
    for row in PAPER_RESULTS.values():
        if key in (a.lower() for a in row.aliases):
            return row
    return None
