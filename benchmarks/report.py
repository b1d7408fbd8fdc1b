"""Reports from a bench output directory alone: the summary (JSON + markdown, the paper's column order and its
rows beside ours), zero-shot vs fine-tuned comparison, and the paper-protocol comparison of ``localize reproduce``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from localize.errors import InputError

from .config import DEFAULT_TASKS, DISPLAY, METRICS, PAPER_ORDER
from .metrics import RecAccumulator, ResAccumulator
from .paper_results import paper_table_rows
from .results import read_rows, read_skipped, write_json


def column_order(keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    keys = list(dict.fromkeys(keys))
    known = [k for k in PAPER_ORDER if k in keys]
    return known + [k for k in keys if k not in known]


def split_metrics(rows: Sequence[dict]) -> dict[str, Any]:
    """Acc@0.5 and mean box IoU from the rows' boxes, cIoU and mIoU from their mask I and U, and the answer
    accuracy (``answer_acc``) over the ``n_answer`` rows with an ``answer_correct`` (None when there are none)."""
    rec, res = RecAccumulator(), ResAccumulator()
    for row in rows:
        rec.add(row["pred_box"], row["target_box"])
        if row.get("mask_u") is not None:
            res.intersections.append(int(row["mask_i"]))
            res.unions.append(int(row["mask_u"]))
    out = {"n": len(rows), "acc@0.5": rec.accuracy(0.5) if rows else None, "box_miou": rec.summary()["miou"]}
    out["n_mask"] = len(res.unions)
    out["ciou"] = res.ciou() if res.unions else None
    out["miou"] = res.miou() if res.unions else None
    answered = [bool(row["answer_correct"]) for row in rows if row.get("answer_correct") is not None]
    problems = [f"{row['id']}: {row['mask_problem']}" for row in rows if row.get("mask_problem")]
    out["n_mask_problem"], out["mask_problem_examples"] = len(problems), problems[:5]
    out["n_unknown_words"] = sum(bool(row.get("unknown_words")) for row in rows)
    out["n_answer"] = len(answered)
    out["answer_acc"] = sum(answered) / len(answered) if answered else None
    if not rows:
        out["box_miou"] = None
    return out


def summarize(out_dir: str | os.PathLike, only: dict[tuple[str, str], set[str]] | None = None) -> dict:
    """The summary of an output directory, recomputed from its JSONL files (and its manifest for the labels);
    ``only``: the ids per (dataset, split) a run asked for (a ``--limit`` below what is on disk), else all."""
    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    rows = read_rows(out)
    skipped = read_skipped(out, {key: {str(r["id"]) for r in value} for key, value in rows.items()})
    if only is not None:
        rows = {key: [r for r in value if str(r["id"]) in only.get(key, ())] for key, value in rows.items()}
        skipped = {key: [r for r in value if str(r["id"]) in only.get(key, ())] for key, value in skipped.items()}
        rows, skipped = ({k: v for k, v in d.items() if k in only} for d in (rows, skipped))
    splits = []
    for dataset, split in column_order([*rows, *skipped]):
        entry = {"dataset": dataset, "split": split, **split_metrics(rows.get((dataset, split), []))}
        reasons = skipped.get((dataset, split), [])
        entry["skipped"] = len(reasons)
        entry["skipped_examples"] = [f"{r['id']}: {r['reason']}" for r in reasons[:5]]
        splits.append(entry)
    model = manifest.get("model", {}).get("spec") or manifest.get("settings", {}).get("model") or "?"
    return {
        "model": model,
        "method": manifest.get("method", "?"),
        "tasks": manifest.get("tasks", list(DEFAULT_TASKS)),
        "heads": manifest.get("heads"),
        "oracle_maps": manifest.get("settings", {}).get("oracle_maps", False),
        "splits": splits,
        "total": {
            **{key: sum(s[key] for s in splits) for key in ("n", "skipped", "n_mask_problem", "n_unknown_words")},
        },
        "metrics": "fractions in [0, 1]; boxes in continuous pixels; empty prediction IoU 0, its target counts in U",
    }


def _label(dataset: str, split: str) -> str:
    return f"{DISPLAY.get(dataset, dataset)} {split}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def model_name(model: str) -> str:
    return Path(model).name if os.path.sep in str(model) else str(model)


def _md_table(columns: Sequence[tuple[str, str]], rows: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    header = "| model / method | " + " | ".join(_label(d, s) for d, s in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    return [header, rule, *(f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows)]


def format_summary_md(summary: dict) -> str:
    """Markdown tables of a summary: one per metric of its tasks (REC Acc@0.5, RES cIoU, RES mIoU, answer exact
    match), then samples and skips."""
    columns = [(s["dataset"], s["split"]) for s in summary["splits"]]
    by_key = {(s["dataset"], s["split"]): s for s in summary["splits"]}
    name = f"{model_name(summary['model'])} / {summary['method']}"
    lines = [f"# Benchmark: {model_name(summary['model'])}", ""]
    for metric, (task, heading) in METRICS.items():
        if task not in summary["tasks"]:
            continue
        lines += [f"## {heading}", ""]
        rows = [(name, [percent(by_key[c][metric]) for c in columns])]
        lines += _md_table(columns, rows + paper_table_rows(summary["model"], metric, columns))  # the paper's, if any
        lines.append("")
    lines += ["## Samples", ""]
    lines += _md_table(columns, [("expressions scored", [str(by_key[c]["n"]) for c in columns])])
    lines += ["| skipped (unreadable) | " + " | ".join(str(by_key[c]["skipped"]) for c in columns) + " |"]
    for key, label in (("n_mask_problem", "RES not scored (empty / unreadable mask)"),
                       ("n_unknown_words", "expressions with unknown words")):  # fmt: skip
        lines += [f"| {label} | " + " | ".join(str(by_key[c].get(key, 0)) for c in columns) + " |"]
    lines.append("")
    examples = [f"- skipped {e['dataset']}/{e['split']}: {x}" for e in summary["splits"] for x in e["skipped_examples"]]
    examples += [f"- no RES {e['dataset']}/{e['split']}: {x}" for e in summary["splits"]
                 for x in e.get("mask_problem_examples", [])]  # fmt: skip
    if examples:
        lines += [*examples, ""]
    lines += [
        "Acc@0.5: box IoU >= 0.5 (continuous pixel coordinates, area w*h). cIoU = sum I / sum U over the split; "
        "mIoU = mean per-expression IoU; an empty prediction has IoU 0 and its target still counts in U.",
    ]
    if "answer" in summary["tasks"]:
        lines += [
            "",
            "Answer: greedy continuation's first N words == the reference answer's N words (case and whitespace "
            "ignored), over the expressions with a reference answer.",
        ]
    return "\n".join(lines).rstrip() + "\n"


def write_summary(out_dir: str | os.PathLike, only: dict[tuple[str, str], set[str]] | None = None) -> dict:
    """Recompute ``summary.json`` and ``summary.md`` from the JSONL files (``only``: as :func:`summarize`)."""
    out = Path(out_dir)
    summary = summarize(out, only)
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(format_summary_md(summary), encoding="utf-8")
    return summary


def compare_runs(base_dir: str | os.PathLike, ft_dir: str | os.PathLike) -> dict:
    """Zero-shot (``base_dir``) vs fine-tuned (``ft_dir``) per split, over the expressions both runs scored.

    Deltas are ``ft - base`` (fractions). Splits only one run has are listed in ``only_base`` / ``only_ft``.
    """
    runs = {}
    for role, folder in (("base", base_dir), ("ft", ft_dir)):
        folder = Path(folder)
        if not (folder / "results").is_dir():
            raise InputError(f"{folder} is not a `localize bench` output directory (no results/)")
        runs[role] = (folder, summarize(folder), read_rows(folder))
    base_rows, ft_rows = runs["base"][2], runs["ft"][2]
    splits = []
    for key in column_order([k for k in base_rows if k in ft_rows]):
        base_by_id = {str(r["id"]): r for r in base_rows[key]}
        ft_by_id = {str(r["id"]): r for r in ft_rows[key]}
        common = [i for i in base_by_id if i in ft_by_id]
        base = split_metrics([base_by_id[i] for i in common])
        ft = split_metrics([ft_by_id[i] for i in common])
        entry: dict[str, Any] = {"dataset": key[0], "split": key[1], "n": len(common)}
        entry["n_base"], entry["n_ft"] = len(base_by_id), len(ft_by_id)
        for metric in METRICS:
            a, b = base[metric], ft[metric]
            entry[metric] = {"base": a, "ft": b, "delta": None if a is None or b is None else b - a}
        splits.append(entry)
    return {
        "base": {"dir": os.fspath(base_dir), "model": runs["base"][1]["model"], "method": runs["base"][1]["method"]},
        "ft": {"dir": os.fspath(ft_dir), "model": runs["ft"][1]["model"], "method": runs["ft"][1]["method"]},
        "splits": splits,
        "only_base": [f"{d}/{s}" for d, s in base_rows if (d, s) not in ft_rows],
        "only_ft": [f"{d}/{s}" for d, s in ft_rows if (d, s) not in base_rows],
    }


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def format_compare(result: dict) -> str:
    """Markdown: per metric, the zero-shot row, the fine-tuned row and the delta row (percentage points)."""
    columns = [(s["dataset"], s["split"]) for s in result["splits"]]
    base = f"zero-shot: {model_name(result['base']['model'])} / {result['base']['method']}"
    ft = f"fine-tuned: {model_name(result['ft']['model'])} / {result['ft']['method']}"
    lines = ["# Zero-shot vs fine-tuned", ""]
    for metric, (_, heading) in METRICS.items():
        if all(s[metric]["base"] is None and s[metric]["ft"] is None for s in result["splits"]):
            continue
        lines += [f"## {heading}", ""]
        rows = [
            (base, [percent(s[metric]["base"]) for s in result["splits"]]),
            (ft, [percent(s[metric]["ft"]) for s in result["splits"]]),
            ("delta (points)", [_signed(s[metric]["delta"]) for s in result["splits"]]),
            *paper_table_rows(result["base"]["model"], metric, columns),
        ]
        lines += [*_md_table(columns, rows), ""]
    lines.append(
        "Expressions compared: " + ", ".join(f"{_label(s['dataset'], s['split'])} {s['n']}" for s in result["splits"])
    )
    for s in result["splits"]:
        if s["n"] != s["n_base"] or s["n"] != s["n_ft"]:
            lines.append(f"- {_label(s['dataset'], s['split'])}: over the {s['n']} expressions both runs have "
                         f"(zero-shot {s['n_base']}, fine-tuned {s['n_ft']})")  # fmt: skip
    for role in ("only_base", "only_ft"):
        if result[role]:
            lines.append(f"- only in {'zero-shot' if role == 'only_base' else 'fine-tuned'}: {', '.join(result[role])}")
    return "\n".join(lines).rstrip() + "\n"


def run_compare(base_dir: str, ft_dir: str, out: str | None = None) -> dict:
    """Print the comparison table; write ``compare.json`` and ``compare.md`` into ``out`` when given."""
    result = compare_runs(base_dir, ft_dir)
    text = format_compare(result)
    print(text, end="")
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "compare.json", result)
        (folder / "compare.md").write_text(text, encoding="utf-8")
        print(f"wrote {folder / 'compare.json'} and {folder / 'compare.md'}")
    return result


def format_paper_comparison(summary: dict, model: str) -> str:
    """Our eight-split table beside the paper's Table 1 / Table 2 row for ``model`` (percent)."""
    from .paper_results import NOT_AVAILABLE, PAPER, SPLITS, TABLES, paper_row

    row = paper_row(model)
    ours = {(s["dataset"], s["split"]): s for s in summary["splits"]}
    name = f"ours: {model_name(summary['model'])} / {summary['method']}"
    lines = [f"# Reproduction: {model}", ""]
    for metric, table in TABLES.items():
        lines += [f"## {table}", ""]
        rows = [(name, [percent(ours[c][metric]) if c in ours else "not run" for c in SPLITS])]
        if row is not None:
            paper = [row.value(metric, *c) for c in SPLITS]
            rows.insert(0, (f"paper: {row.model}", [f"{v:.1f}" if v is not None else "n/a" for v in paper]))
        lines += [*_md_table(SPLITS, rows), ""]
    if row is None:
        lines.append(f"The paper's tables list no row for {model!r} in benchmarks/paper_results.py.")
    elif not row.available:
        lines.append(f"paper values: {NOT_AVAILABLE} (benchmarks/paper_results.py).")
    lines.append(f"Source of the paper's values: {PAPER}.")
    if not summary.get("sam", True):
        lines.append("RES here uses the attention mask (no --sam); the paper's RES uses SAM with a box prompt.")
    return "\n".join(lines).rstrip() + "\n"
