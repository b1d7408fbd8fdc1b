"""benchmarks/paper_results.py against the paper's text: every typed cell of Tables 1-3, and the bench tables."""

from __future__ import annotations

import re
from pathlib import Path

from localize.benchmarks import report
from localize.benchmarks.paper_results import (
    PAPER_RESULTS,
    REASONSEG_COLUMNS,
    REASONSEG_LISA,
    SPLITS,
    paper_row,
    paper_table_rows,
)

PAPER_TEXT = Path(__file__).resolve().parent / "data" / "paper-tables.txt"  # see tests/data/README.md


def test_cells_quoted_in_the_issue():
    row = paper_row("llava-hf/llava-1.5-7b-hf")
    assert row is PAPER_RESULTS["llava-1.5-7b"] and "arXiv:2503.06287" in row.source and row.available
    assert row.value("acc@0.5", "refcoco", "val") == 86.5 and row.value("ciou", "refcoco", "val") == 74.2
    assert paper_row("LLaVA-1.5-13B").value("acc@0.5", "refcocog", "test") == 85.5
    assert paper_row("/models/llava-1.5-13b/").reasonseg[("val", "overall")] == 60.5  # a local copy, by name
    assert paper_row("qwen2-vl-2b") is None and len(PAPER_RESULTS) == 10


def _table_rows(text: str, start: str, end: str, width: int) -> dict[str, list[float]]:
    block = text[text.index(start) : text.index(end, text.index(start))]
    number = r"(\d+\.\d)"
    rows = {}
    for line in block.splitlines():
        m = re.match(rf"^(.+?)((?: {number}){{{width}}})\s*$", line.strip())
        if m:
            rows[" ".join(m.group(1).replace("\xa0", " ").split())] = [float(v) for v in m.group(2).split()]
    return rows


def test_every_cell_matches_the_paper_text():
    text = PAPER_TEXT.read_text(encoding="utf-8")
    ours = "Training-free methods w/ LVLMs (Ours)"
    rec = _table_rows(text, "Table 1: Comparison", "Table 2: Comparison", 8)
    res = _table_rows(text, "Table 2: Comparison", "Specifically, our objective", 8)
    seg = _table_rows(text, "Table 3: Comparison", "Notably, the visual grounding", 4)
    assert ours in text
    for row in PAPER_RESULTS.values():
        assert [row.value("acc@0.5", *c) for c in SPLITS] == rec[row.model], row.model
        assert [row.value("ciou", *c) for c in SPLITS] == res[row.model], row.model
        if row.reasonseg:
            assert [row.reasonseg[c] for c in REASONSEG_COLUMNS] == seg[f"{row.model} (Ours)"]
    for name, values in REASONSEG_LISA.items():
        assert [values[c] for c in REASONSEG_COLUMNS] == seg[f"{name} [26]"]


def test_bench_summary_and_compare_show_the_paper_beside_ours():
    columns = [("refcoco", "val"), ("refcoco", "testA")]
    assert paper_table_rows("llava-1.5-7b", "acc@0.5", columns) == [("paper: LLaVA-1.5-7B", ["86.5", "89.8"])]
    assert paper_table_rows("llava-1.5-7b", "miou", columns) == []  # the paper reports cIoU only
    assert paper_table_rows("shapes-tiny", "ciou", columns) == []
    split = {"dataset": "refcoco", "split": "val", "n": 2, "skipped": 0, "skipped_examples": []}
    split |= {"acc@0.5": 0.5, "ciou": 0.7, "miou": 0.6}
    summary = {"model": "llava-hf/llava-1.5-7b-hf", "method": "heads", "tasks": ["rec", "res"], "splits": [split]}
    text = report.format_summary_md(summary)
    assert "| paper: LLaVA-1.5-7B | 86.5 |" in text and "| paper: LLaVA-1.5-7B | 74.2 |" in text
    text = report.format_paper_comparison({**summary, "sam": True}, "llava-1.5-7b")
    assert "| paper: LLaVA-1.5-7B | 86.5 | 89.8 |" in text and "Table 2" in text
