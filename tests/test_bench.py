"""`localize bench` on the real-format RefCOCO fixture with stand-in images: rows, summary, resume, oracle, compare."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_DIR
from localize.benchmarks import config, predict, report, results
from localize.benchmarks.metrics import box_iou, mask_intersection_union
from localize.benchmarks.paper_results import PAPER_RESULTS, SPLITS, paper_row
from PIL import Image

from localize.cli import main
from localize.data.registry import open_dataset
from localize.errors import InputError
from localize.postprocess import rle_to_mask
from localize.runs import AppendLog

IMAGES = {  # the fixture's COCO images (not shipped): name -> (width, height)
    "COCO_train2014_000000495169.jpg": (640, 480),
    "COCO_train2014_000000510027.jpg": (640, 480),
    "COCO_train2014_000000572949.jpg": (612, 612),
}
EXPECTED = {
    ("refcoco", "val"): 6,
    ("refcoco", "testA"): 6,
    ("refcoco", "testB"): 6,
    ("refcoco+", "val"): 7,
    ("refcoco+", "testA"): 6,
    ("refcoco+", "testB"): 6,
    ("refcocog", "val"): 4,
    ("refcocog", "test"): 4,
}
HEADS = "L2 H0,L3 H1"


def _stand_ins(folder: Path, skip: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (width, height) in IMAGES.items():
        if name != skip:
            Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny LLaVA and stand-in images of the fixture's sizes."""
    from localize.testing import tiny_llava

    root = tmp_path_factory.mktemp("bench")
    model, processor = tiny_llava()
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return {"root": root, "model": str(root / "model"), "images": str(_stand_ins(root / "images"))}


def _bench(ws: dict, out: Path, *extra: str, data: str = "refcoco,refcoco+,refcocog", images: str | None = None) -> int:
    argv = ["bench", "--model", ws["model"], "--data", data, "--data-root", str(FIXTURE_DIR)]
    argv += ["--image-root", images or ws["images"], "--out", str(out), "--device", "cpu", "--dtype", "float32"]
    argv += ["--no-progress", *extra]
    return main(argv)


@pytest.fixture(scope="module")
def full_run(workspace):
    """One uninterrupted run over the eight splits with explicit heads."""
    out = workspace["root"] / "full"
    assert _bench(workspace, out, "--heads", HEADS, "--gallery", "3") == 0
    return out


@pytest.fixture(scope="module")
def oracle_run(workspace):
    """The oracle ceiling on RefCOCO val (smoothing scaled to the tiny model's 6x6 grid)."""
    out = workspace["root"] / "oracle"
    args = ("--heads", HEADS, "--oracle-maps", "--scale-smoothing", "--splits", "val", "--gallery", "0")
    assert _bench(workspace, out, *args, data="refcoco") == 0
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_row_per_expression_per_split_and_summary_recomputes(full_run):
    rows = results.read_rows(full_run)
    assert {key: len(value) for key, value in rows.items()} == EXPECTED
    summary = json.loads((full_run / "summary.json").read_text())
    by_split = {(s["dataset"], s["split"]): s for s in summary["splits"]}
    assert [(s["dataset"], s["split"]) for s in summary["splits"]] == list(SPLITS)  # the paper's column order
    for (dataset, split), n in EXPECTED.items():
        lines = _lines(full_run / "results" / dataset / f"{split}.jsonl")
        assert len(lines) == n and len({r["id"] for r in lines}) == n
        source = {s.sample_id: s for s in open_dataset(dataset, data_root=FIXTURE_DIR, split=split)}
        assert {r["id"] for r in lines} == set(source)
        inter = union = 0
        ious, hits = [], []
        for row in lines:  # independent recomputation: boxes from the rows, masks from the RLE and the annotations
            sample = source[row["id"]]
            assert row["target_box"] == list(sample.box) and row["expression"] == sample.expression
            iou = box_iou(row["pred_box"], sample.box)
            assert iou == pytest.approx(row["box_iou"], abs=1e-6)
            hits.append(iou >= 0.5)
            i, u = mask_intersection_union(rle_to_mask(row["pred_mask_rle"]), sample.mask())
            assert (i, u) == (row["mask_i"], row["mask_u"])
            inter, union = inter + i, union + u
            ious.append(i / u)
            assert set(row["timings"]) >= {"image_s", "ground_s", "metrics_s"}
        entry = by_split[(dataset, split)]
        assert entry["n"] == n and entry["skipped"] == 0
        assert entry["acc@0.5"] == pytest.approx(np.mean(hits))
        assert entry["ciou"] == pytest.approx(inter / union)
        assert entry["miou"] == pytest.approx(np.mean(ious))
    assert report.summarize(full_run) == summary  # the files alone give the same summary
    markdown = (full_run / "summary.md").read_text()
    assert "| model / method | RefCOCO val | RefCOCO testA" in markdown and "RES: cIoU" in markdown
    manifest = json.loads((full_run / "manifest.json").read_text())
    assert manifest["heads"] == [[2, 0], [3, 1]] and manifest["versions"]["transformers"]
    assert manifest["settings"]["oracle_maps"] is False and manifest["model"]["num_layers"] == 4
    assert len(list((full_run / "gallery").glob("*.png"))) == 3


def test_interrupted_run_resumes_without_loss_or_duplicates(workspace, full_run, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    original = AppendLog.write
    written = []

    def dying_write(self, *rows):
        if len(written) == 7:
            raise KeyboardInterrupt  # a kill after 7 rows
        original(self, *rows)
        written.extend(row["id"] for row in rows)

    monkeypatch.setattr(AppendLog, "write", dying_write)
    assert _bench(workspace, out, "--heads", HEADS, "--gallery", "0", data="refcoco") == 130
    monkeypatch.setattr(AppendLog, "write", original)
    assert sum(len(r) for r in results.read_rows(out).values()) == 7
    assert _bench(workspace, out, "--heads", HEADS, "--gallery", "0", data="refcoco") == 0
    # A kill mid-write: the last line torn in half.
    testb = out / "results" / "refcoco" / "testB.jsonl"
    text = testb.read_text().splitlines(keepends=True)
    testb.write_text("".join(text[:-1]) + text[-1][: len(text[-1]) // 2])
    assert _bench(workspace, out, "--heads", HEADS, "--gallery", "0", data="refcoco") == 0

    reference = results.read_rows(full_run)
    for split in ("val", "testA", "testB"):
        lines = _lines(out / "results" / "refcoco" / f"{split}.jsonl")  # every line parses
        assert sorted(r["id"] for r in lines) == sorted(r["id"] for r in reference[("refcoco", split)])
        expected = {r["id"]: r for r in reference[("refcoco", split)]}
        for row in lines:
            for key in ("pred_box", "box_iou", "mask_i", "mask_u", "pred_mask_rle"):
                assert row[key] == expected[row["id"]][key]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["n"] for s in summary["splits"]] == [6, 6, 6]
    assert len(json.loads((out / "manifest.json").read_text())["runs"]) == 3


def test_changed_settings_are_refused(workspace, full_run, capsys):
    before = (full_run / "results" / "refcoco" / "val.jsonl").read_text()
    assert _bench(workspace, full_run, "--heads", HEADS, "--sigma", "0.5", "--gallery", "0") == 2
    err = capsys.readouterr().err
    assert "refusing to mix" in err and "sigma" in err
    assert _bench(workspace, full_run, "--heads", "L2 H0", "--gallery", "0") == 2
    assert (full_run / "results" / "refcoco" / "val.jsonl").read_text() == before


def test_oracle_maps_beat_random_heads(workspace, oracle_run, tmp_path):
    heads_out = tmp_path / "heads"
    args = ("--heads", HEADS, "--scale-smoothing", "--splits", "val", "--gallery", "0")
    assert _bench(workspace, heads_out, *args, data="refcoco") == 0
    oracle = json.loads((oracle_run / "summary.json").read_text())["splits"][0]
    heads = json.loads((heads_out / "summary.json").read_text())["splits"][0]
    assert oracle["n"] == heads["n"] == 6
    assert oracle["acc@0.5"] > heads["acc@0.5"] and oracle["ciou"] > heads["ciou"]
    manifest = json.loads((oracle_run / "manifest.json").read_text())
    assert manifest["settings"]["oracle_maps"] is True and manifest["method"].startswith("oracle")


def test_compare_gives_the_delta_table(full_run, oracle_run, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["bench", "--compare", str(full_run), str(oracle_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "compare.json").read_text())
    assert [(s["dataset"], s["split"]) for s in result["splits"]] == [("refcoco", "val")]  # splits both runs have
    assert "refcoco/testA" in result["only_base"] and not result["only_ft"]
    base = json.loads((full_run / "summary.json").read_text())["splits"][0]
    ft = json.loads((oracle_run / "summary.json").read_text())["splits"][0]
    entry = result["splits"][0]
    assert entry["n"] == 6
    assert entry["acc@0.5"]["delta"] == pytest.approx(ft["acc@0.5"] - base["acc@0.5"])
    assert entry["ciou"]["delta"] == pytest.approx(ft["ciou"] - base["ciou"])
    delta = f"{100 * (ft['acc@0.5'] - base['acc@0.5']):+.1f}"  # the hand-checked delta, as printed
    assert f"| delta (points) | {delta} |" in printed
    assert (out / "compare.md").read_text() == printed.split("wrote ")[0]


def test_missing_image_is_skipped_counted_and_reported(workspace, tmp_path):
    missing = "COCO_train2014_000000572949.jpg"
    images = _stand_ins(tmp_path / "images", skip=missing)
    out = tmp_path / "out"
    on_missing = sum(Path(s.image).name == missing for s in open_dataset("refcoco", data_root=FIXTURE_DIR, split="val"))
    code = _bench(
        workspace, out, "--heads", HEADS, "--splits", "val", "--gallery", "0", data="refcoco", images=str(images)
    )
    assert code == (1 if on_missing == 6 else 0)  # a run that scored nothing exits 1
    entry = json.loads((out / "summary.json").read_text())["splits"][0]
    assert on_missing > 0 and entry["skipped"] == on_missing and entry["n"] == 6 - on_missing
    assert missing in entry["skipped_examples"][0] and "skipped" in (out / "summary.md").read_text()


def test_heads_from_discovery_records_the_heads_file(workspace, tmp_path):
    out = tmp_path / "disc"
    args = ("--heads-from-discovery", "--discovery-split", "val", "--discovery-samples", "4", "--k", "2")
    assert _bench(workspace, out, *args, "--splits", "val", "--limit", "2", "--gallery", "0", data="refcoco") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    digest = hashlib.sha256((out / "heads.json").read_bytes()).hexdigest()
    assert manifest["heads_source"] == "discovery" and manifest["heads_file_sha256"] == digest
    assert len(manifest["heads"]) == 2 and manifest["settings"]["discovery"]["samples"] == 4


def test_parse_splits_and_paper_table():
    assert config.parse_splits(["refcoco", "refcocog"], None)[-2:] == [("refcocog", "val"), ("refcocog", "test")]
    assert config.parse_splits(["refcoco", "refcocog"], "val,refcocog:test") == [
        ("refcoco", "val"),
        ("refcocog", "val"),
        ("refcocog", "test"),
    ]
    row = paper_row("llava-hf/llava-1.5-7b-hf")
    assert row is PAPER_RESULTS["llava-1.5-7b"] and "arXiv:2503.06287" in row.source and row.available
    summary = {"model": "m", "method": "heads", "splits": [], "sam": False}
    text = report.format_paper_comparison(summary, "llava-1.5-7b")
    assert "| paper: LLaVA-1.5-7B | 86.5 |" in text and "Table 1" in text and "Table 2" in text
    assert "no row for 'qwen2-vl-2b'" in report.format_paper_comparison(summary, "qwen2-vl-2b")


def test_sam_refines_the_masks(workspace, tmp_path, monkeypatch):
    import localize.refine.sam
    from localize.refine.testing import tiny_sam

    monkeypatch.setattr(localize.refine.sam, "load_sam", lambda path, model_type, device: tiny_sam().to(device).eval())
    checkpoint = tmp_path / "sam_tiny.pth"
    checkpoint.write_bytes(b"stand-in")  # load_sam is replaced: the file is only recorded
    out = tmp_path / "sam"
    args = ("--heads", HEADS, "--sam", str(checkpoint), "--sam-type", "vit_b", "--prompt", "box+points")
    assert _bench(workspace, out, *args, "--splits", "val", "--gallery", "1", data="refcoco") == 0
    rows = results.read_rows(out)[("refcoco", "val")]
    assert len(rows) == 6 and any(r["score"] > 0 for r in rows)
    assert all((r["sam_score"] is not None) == (r["score"] > 0) for r in rows)  # SAM where attention found something
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["sam"] == {"name": "sam_tiny.pth", "bytes": 8}
    assert manifest["settings"]["prompt"] == "box+points" and "SAM box+points" in manifest["method"]


# -- the answer task (shapes world) ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory):
    """A saved tiny LLaVA whose word-level tokenizer knows the shapes world's words."""
    from localize.data.shapes import VOCABULARY
    from localize.testing import tiny_llava

    folder = tmp_path_factory.mktemp("shapes") / "model"
    model, processor = tiny_llava(words=VOCABULARY)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def _shapes_bench(model: str, out: Path, tasks: str, *extra: str) -> int:
    argv = ["bench", "--model", model, "--data", "shapes", "--splits", "val", "--limit", "4", "--task", tasks]
    argv += ["--heads", HEADS, "--out", str(out), "--device", "cpu", "--dtype", "float32", "--no-progress"]
    return main([*argv, "--gallery", "0", *extra])


@pytest.fixture(scope="module")
def answer_runs(shapes_model, tmp_path_factory):
    """The same 4 shapes expressions benchmarked with the answer task and without it."""
    root = tmp_path_factory.mktemp("answer_runs")
    assert _shapes_bench(shapes_model, root / "with", "rec,answer") == 0
    assert _shapes_bench(shapes_model, root / "without", "rec") == 0
    return {"with": root / "with", "without": root / "without"}


def test_vlm_answer_is_greedy_bounded_and_deterministic(tiny_vlm, noise_image):
    first = tiny_vlm.answer(noise_image, "the red circle", max_new_tokens=3)
    assert isinstance(first, str) and len(first.split()) <= 3
    assert first == " ".join(first.split())  # whitespace collapsed, stripped
    assert tiny_vlm.answer(noise_image, "the red circle", max_new_tokens=3) == first
    longer = tiny_vlm.answer(noise_image, "the red circle", max_new_tokens=6)
    assert len(longer.split()) <= 6 and longer.split()[: len(first.split())] == first.split()  # greedy prefix


def test_answer_matches_compares_the_first_reference_words():
    assert predict.answer_matches("x2 y3 small red circle", "x2 y3 small red circle")
    assert predict.answer_matches("  X2   y3\nSmall red CIRCLE ", "x2 y3 small red circle")  # case and whitespace
    assert predict.answer_matches("x2 y3 small red circle x1 blue the", "x2 y3 small red circle")  # trailing words
    assert not predict.answer_matches("x2 y3 small red", "x2 y3 small red circle")  # too short
    assert not predict.answer_matches("x2 y4 small red circle", "x2 y3 small red circle")
    assert not predict.answer_matches("y3 x2 small red circle", "x2 y3 small red circle")  # order counts
    assert not predict.answer_matches("x2y3 small red circle", "x2 y3 small red circle")  # words, not characters
    assert not predict.answer_matches("", "x2 y3") and not predict.answer_matches("anything", "  ")
    assert config.parse_tasks("rec, ANSWER,rec") == ["rec", "answer"]
    with pytest.raises(InputError, match="--task"):
        config.parse_tasks("rec,vqa")


def test_answer_task_rows_and_summary(answer_runs):
    from localize.data.shapes import ShapesDataset

    reference = {s.sample_id: s for s in (ShapesDataset(split="val")[i] for i in range(4))}
    rows = results.read_rows(answer_runs["with"])[("shapes", "val")]
    assert len(rows) == 4
    for row in rows:
        assert isinstance(row["pred_answer"], str) and isinstance(row["answer_correct"], bool)
        assert row["target_answer"] == reference[row["id"]].answer
        assert row["answer_correct"] == predict.answer_matches(row["pred_answer"], row["target_answer"])
        budget = len(row["target_answer"].split()) + config.ANSWER_EXTRA_TOKENS  # word-level tokenizer: 1 word/token
        assert len(row["pred_answer"].split()) <= budget and "answer_s" in row["timings"]
    summary = json.loads((answer_runs["with"] / "summary.json").read_text())
    entry = summary["splits"][0]
    assert entry["n_answer"] == 4 and entry["answer_acc"] == pytest.approx(np.mean([r["answer_correct"] for r in rows]))
    assert "Answer: exact match (%)" in (answer_runs["with"] / "summary.md").read_text()
    manifest = json.loads((answer_runs["with"] / "manifest.json").read_text())
    assert manifest["tasks"] == ["rec", "answer"] and manifest["settings"]["answer"] == config.ANSWER_PROTOCOL

    plain_rows = results.read_rows(answer_runs["without"])[("shapes", "val")]
    assert [r["id"] for r in plain_rows] == [r["id"] for r in rows]
    assert all("pred_answer" not in r and "answer_correct" not in r for r in plain_rows)
    plain = json.loads((answer_runs["without"] / "summary.json").read_text())["splits"][0]
    assert plain["answer_acc"] is None and plain["n_answer"] == 0
    assert "Answer" not in (answer_runs["without"] / "summary.md").read_text()
    assert "answer" not in json.loads((answer_runs["without"] / "manifest.json").read_text())["settings"]


def test_adding_or_dropping_the_answer_task_is_refused(shapes_model, answer_runs, capsys):
    before = {k: (v / "results" / "shapes" / "val.jsonl").read_text() for k, v in answer_runs.items()}
    assert _shapes_bench(shapes_model, answer_runs["without"], "rec,answer") == 2
    err = capsys.readouterr().err
    assert "refusing to mix" in err and "answer" in err
    assert _shapes_bench(shapes_model, answer_runs["with"], "rec") == 2
    assert "refusing to mix" in capsys.readouterr().err
    # rec and res only pick tables: switching between them is not a change of settings (no answer key either way).
    assert _shapes_bench(shapes_model, answer_runs["without"], "res") == 0
    assert {k: (v / "results" / "shapes" / "val.jsonl").read_text() for k, v in answer_runs.items()} == before


def test_compare_shows_the_answer_delta_when_present(answer_runs, tmp_path, capsys):
    with_answers = json.loads((answer_runs["with"] / "summary.json").read_text())["splits"][0]["answer_acc"]
    out = tmp_path / "same"
    assert main(["bench", "--compare", str(answer_runs["with"]), str(answer_runs["with"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    entry = json.loads((out / "compare.json").read_text())["splits"][0]
    assert entry["answer_acc"] == {"base": with_answers, "ft": with_answers, "delta": 0.0}
    assert "## Answer: exact match (%)" in printed and "| delta (points) | +0.0 |" in printed

    out = tmp_path / "mixed"  # one run without answers: its cells and the delta are n/a, the rest still renders
    assert main(["bench", "--compare", str(answer_runs["without"]), str(answer_runs["with"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    entry = json.loads((out / "compare.json").read_text())["splits"][0]
    assert entry["answer_acc"] == {"base": None, "ft": with_answers, "delta": None}
    assert entry["acc@0.5"]["delta"] == pytest.approx(0.0)  # same model, heads and expressions
    answer_section = printed.split("## Answer: exact match (%)")[1]
    assert "| delta (points) | n/a |" in answer_section and "REC: Acc@0.5" in printed

    out = tmp_path / "none"  # neither run has answers: no answer table at all
    plain = str(answer_runs["without"])
    assert main(["bench", "--compare", plain, plain, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Answer" not in printed and "REC: Acc@0.5" in printed
    assert json.loads((out / "compare.json").read_text())["splits"][0]["answer_acc"]["delta"] is None


def test_a_bench_that_scores_nothing_fails_and_a_negative_limit_is_refused(workspace, tmp_path, capsys):
    """All images missing: the run reports every skip and exits 1, not 0 with empty tables; ``--limit -5`` is refused."""
    empty = tmp_path / "no-images"
    empty.mkdir()
    out = tmp_path / "out"
    assert (
        _bench(workspace, out, "--heads", HEADS, "--splits", "val", "--gallery", "0", data="refcoco", images=str(empty))
        == 1
    )
    err = capsys.readouterr().err
    assert "no expression was scored (6 skipped)" in err and "Traceback" not in err
    assert (
        _bench(workspace, tmp_path / "neg", "--heads", HEADS, "--splits", "val", "--limit", "-5", data="refcoco") == 2
    )
    assert "--limit must be >= 0" in capsys.readouterr().err
