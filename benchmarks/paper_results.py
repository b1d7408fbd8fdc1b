"""The paper's reported REC / RES / ReasonSeg numbers, shipped as data for ``localize bench`` / ``reproduce``.

Source: Seil Kang, Jinyeong Kim, Junhyeok Kim, Seong Jae Hwang, "Your Large Vision-Language Model Only Needs A Few
Attention Heads For Visual Grounding", CVPR 2025 (arXiv:2503.06287), typed from the text copy
``shared/papers/003_a2b03e701bbab4c2.txt``: Table 1 (REC, Acc@0.5 %), Table 2 (RES, cIoU %; the paper reports
cIoU only, sec. 6.1), rows "Training-free methods w/ LVLMs (Ours)", all 10 LVLMs, k = 3 heads; Table 3 (ReasonSeg,
cIoU %). ``tests/test_paper_results.py`` checks every cell against the text.

One inconsistency of the paper: DeepSeek-VL-7B RES RefCOCO+ testA is 66.1 in Table 2 and 67.1 in Table 7; Table 2
is kept here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from localize.data.registry import paper_columns

PAPER = (
    'Kang, Kim, Kim, Hwang, "Your Large Vision-Language Model Only Needs A Few Attention Heads For Visual '
    'Grounding", CVPR 2025, arXiv:2503.06287'
)
NOT_AVAILABLE = "the paper reports no value here"
# The eight evaluation splits, in the paper's column order (from the dataset registry).
SPLITS: tuple[tuple[str, str], ...] = tuple(paper_columns())
# Metric keys of a paper row -> the table that reports them.
TABLES = {"acc@0.5": "Table 1 (REC, Acc@0.5)", "ciou": "Table 2 (RES, cIoU)"}
# Table 3's columns: (split, query length).
REASONSEG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("val", "overall"),
    ("test", "short"),
    ("test", "long"),
    ("test", "overall"),
)


@dataclass(frozen=True)
class PaperRow:
    """One model's row of the paper's tables (percent); ``reasonseg`` keyed by :data:`REASONSEG_COLUMNS`."""

    model: str  # as the paper names it
    aliases: tuple[str, ...]  # our aliases and hub ids that are this model
    values: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)
    reasonseg: dict[tuple[str, str], float] = field(default_factory=dict)
    source: str = PAPER
    filled_from: str = "Tables 1 and 2 (Ours rows) of the CVPR 2025 paper"

    def value(self, metric: str, dataset: str, split: str) -> float | None:
        """The paper's value (percent) for ``metric`` on ``dataset``/``split``, or None."""
        return self.values.get(metric, {}).get((dataset, split))

    @property
    def available(self) -> bool:
        """Whether any value is known."""
        return any(table for table in self.values.values())


def _row(model: str, aliases: Sequence[str], rec: Sequence[float], res: Sequence[float], reasonseg=()) -> PaperRow:
    if len(rec) != len(SPLITS) or len(res) != len(SPLITS):
        raise ValueError(f"{model}: a row needs {len(SPLITS)} values per table")
    return PaperRow(
        model=model,
        aliases=(model.lower(), *aliases),
        values={"acc@0.5": dict(zip(SPLITS, rec)), "ciou": dict(zip(SPLITS, res))},
        reasonseg=dict(zip(REASONSEG_COLUMNS, reasonseg)),
        filled_from="Tables 1, 2" + (" and 3" if reasonseg else "") + " of the CVPR 2025 paper",
    )


# Tables 1 and 2 ("Ours"), columns as SPLITS; Table 3 for the two LLaVA-1.5 models.
PAPER_RESULTS: dict[str, PaperRow] = {
    "deepseek-vl-1.3b": _row(
        "DeepSeek-VL-1.3B",
        ("deepseek-ai/deepseek-vl-1.3b-chat",),
        (73.2, 77.7, 70.7, 62.0, 66.7, 57.1, 65.2, 69.3),
        (56.3, 57.0, 52.7, 51.2, 55.5, 49.2, 52.3, 55.8),
    ),
    "mini-gemini-2b": _row(
        "Mini-Gemini-2B",
        ("mgm-2b", "yanweili/mgm-2b"),
        (74.0, 77.5, 71.1, 62.5, 67.8, 59.3, 65.1, 69.3),
        (59.8, 60.3, 55.5, 56.3, 59.9, 51.8, 55.1, 60.3),
    ),
    "internvl-6b": _row(
        "InternVL-6B",
        (),
        (85.2, 86.4, 78.5, 78.0, 83.3, 71.9, 81.1, 80.5),
        (62.1, 65.8, 60.9, 62.2, 65.5, 55.5, 63.5, 65.4),
    ),
    "yi-vl-6b": _row(
        "Yi-VL-6B",
        ("01-ai/yi-vl-6b",),
        (85.1, 86.8, 78.4, 78.9, 84.2, 72.2, 80.5, 80.9),
        (62.5, 65.8, 60.7, 61.0, 65.3, 56.0, 64.0, 67.0),
    ),
    "deepseek-vl-7b": _row(
        "DeepSeek-VL-7B",
        ("deepseek-ai/deepseek-vl-7b-chat",),
        (85.3, 87.2, 81.0, 77.8, 83.9, 73.5, 81.1, 82.8),
        (73.9, 76.6, 70.7, 63.1, 66.1, 56.5, 64.0, 68.9),
    ),
    "sharegpt4v-7b": _row(
        "ShareGPT4V-7B",
        ("lin-chen/sharegpt4v-7b",),
        (86.1, 87.1, 80.5, 79.7, 86.2, 71.3, 82.4, 82.9),
        (73.5, 76.7, 70.1, 59.4, 63.8, 55.9, 60.7, 65.1),
    ),
    "llava-7b": _row(
        "LLaVA-7B",
        (),
        (80.3, 83.5, 77.4, 74.5, 80.2, 69.3, 77.5, 77.1),
        (65.4, 66.2, 61.1, 59.9, 63.2, 52.7, 59.7, 63.3),
    ),
    "llava-1.5-7b": _row(
        "LLaVA-1.5-7B",
        ("llava-hf/llava-1.5-7b-hf", "liuhaotian/llava-v1.5-7b"),
        (86.5, 89.8, 80.2, 80.1, 86.3, 71.9, 82.3, 83.0),
        (74.2, 76.5, 70.4, 62.5, 65.2, 56.0, 64.2, 68.1),
        (52.4, 48.0, 49.1, 48.7),
    ),
    "llava-13b": _row(
        "LLaVA-13B",
        (),
        (82.8, 85.3, 79.8, 79.3, 82.4, 73.0, 79.8, 79.5),
        (66.8, 68.0, 63.7, 62.3, 66.9, 57.3, 65.0, 68.2),
    ),
    "llava-1.5-13b": _row(
        "LLaVA-1.5-13B",
        ("llava-hf/llava-1.5-13b-hf", "liuhaotian/llava-v1.5-13b"),
        (87.2, 90.0, 83.3, 82.7, 88.5, 74.0, 84.3, 85.5),
        (76.1, 78.9, 72.8, 64.1, 67.1, 57.3, 67.7, 69.0),
        (60.5, 48.7, 51.0, 49.9),
    ),
}
# Table 3's LISA baselines (fine-tuned), for the ReasonSeg comparison.
REASONSEG_LISA: dict[str, dict[tuple[str, str], float]] = {
    "LISA-7B": dict(zip(REASONSEG_COLUMNS, (52.3, 48.5, 48.9, 48.8))),
    "LISA-13B": dict(zip(REASONSEG_COLUMNS, (60.3, 50.0, 50.9, 50.8))),
}


def paper_row(model: str) -> PaperRow | None:
    """The paper's row for a model alias or hub id (case-insensitive; a local path by its last part), or None."""
    key = str(model).strip().rstrip("/").lower()
    for candidate in (key, key.rsplit("/", 1)[-1]):
        for row in PAPER_RESULTS.values():
            if candidate in row.aliases:
                return row
    return None


def paper_table_rows(model: str, metric: str, columns: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """``[("paper: <name>", cells)]`` for a bench table of ``columns`` when the paper has ``model`` and ``metric``."""
    row = paper_row(model)
    if row is None or metric not in row.values:
        return []
    cells = [f"{v:.1f}" if (v := row.value(metric, *c)) is not None else "n/a" for c in columns]
    return [(f"paper: {row.model}", cells)]
