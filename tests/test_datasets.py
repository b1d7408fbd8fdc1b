"""Grounding datasets: the refer layout (real RefCOCO-family fixture), parquet mirrors, ReasonSeg, the entry point."""

from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from localize.data.refer import restricted_load
from localize.data.registry import (
    add_data_check_arguments,
    check_dataset,
    format_check_report,
    open_dataset,
    run_data_check,
)
from localize.data.sample import box_xywh_to_xyxy, decode_segmentation
from localize.errors import DataError, ImageError
from localize.images import load_image

FIXTURE = Path(__file__).resolve().parent / "data" / "refcoco-fixture"
FIXTURE_IMAGES = {  # the fixture's COCO images (absent there): file name -> size
    "COCO_train2014_000000495169.jpg": (640, 480),
    "COCO_train2014_000000510027.jpg": (640, 480),
    "COCO_train2014_000000572949.jpg": (612, 612),
}


def _stand_in(path: Path, size: tuple[int, int], fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path, format=fmt)
    return path


def _jpeg_bytes(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_refer(root: Path, refs: list, annotations: list, images: list, dataset: str = "refcoco") -> Path:
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs))  # plain containers only: no globals in the stream
    instances = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}
    (folder / "instances.json").write_text(json.dumps(instances))
    return root


# --- the refer layout on the real fixture ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split", "count"),
    [
        ("refcoco", "val", 6),
        ("refcoco", "testA", 6),
        ("refcoco", "testB", 6),
        ("refcoco+", "val", 7),
        ("refcoco+", "testA", 6),
        ("refcoco+", "testB", 6),
        ("refcocog", "val", 4),
        ("refcocog", "test", 4),
    ],
)
def test_refer_split_counts(name: str, split: str, count: int) -> None:
    source = open_dataset(name, data_root=FIXTURE, split=split)
    assert len(source) == count
    assert len(list(source)) == count and source[-1] is source[count - 1]
    assert source.problems == []
    assert len({s.sample_id for s in source}) == count
    assert all(s.dataset == name and s.split == split for s in source)


def test_refer_boxes_and_masks_match_annotations() -> None:
    flat = json.loads((FIXTURE / "annotations.json").read_text())["samples"]
    expected = Counter((r["dataset"], r["split"], int(r["ref_id"]), r["sentence"]) for r in flat)
    by_key = {(r["dataset"], r["split"], int(r["ref_id"]), r["sentence"]): r for r in flat}
    seen: Counter = Counter()
    for name, splits in {
        "refcoco": ("val", "testA", "testB"),
        "refcoco+": ("val", "testA", "testB"),
        "refcocog": ("val", "test"),
    }.items():
        for split in splits:
            for sample in open_dataset(name, data_root=FIXTURE, split=split):
                key = (name, split, sample.meta["ref_id"], sample.expression)
                seen[key] += 1
                row = by_key[key]
                assert sample.box == pytest.approx(box_xywh_to_xyxy(row["bbox_xywh"]))
                assert sample.image_size == (int(row["width"]), int(row["height"]))
                assert sample.meta["ann_id"] == int(row["ann_id"])
                assert sample.meta["image_id"] == int(row["image_id"])
                assert sample.meta["category_id"] == int(row["category_id"])
                assert isinstance(sample.segmentation, list)  # polygons kept, decoded on demand
                mask = sample.mask()
                assert mask.shape == (sample.image_size[1], sample.image_size[0])
                assert mask.sum() == pytest.approx(float(row["area"]), rel=0.01)
    assert seen == expected and sum(seen.values()) == 45


def test_refer_sample_fields_and_missing_image() -> None:
    source = open_dataset("refcoco", data_root=FIXTURE, split="val")
    sample = source[0]
    ref_id, sent_id = sample.meta["ref_id"], sample.meta["sent_id"]
    assert sample.sample_id == f"refcoco/unc/val/ref{ref_id}/sent{sent_id}"
    assert set(sample.meta) >= {"ref_id", "ann_id", "image_id", "category_id", "sent_id"}
    expected_path = FIXTURE / "images/mscoco/images/train2014" / "COCO_train2014_000000572949.jpg"
    assert Path(sample.image) == expected_path
    with pytest.raises(ImageError, match="COCO_train2014_000000572949.jpg"):
        load_image(sample.image)


def test_refer_image_root_override_loads_stand_in(tmp_path: Path) -> None:
    _stand_in(tmp_path / "COCO_train2014_000000572949.jpg", FIXTURE_IMAGES["COCO_train2014_000000572949.jpg"])
    source = open_dataset("refcoco", data_root=FIXTURE, split="val", image_root=tmp_path)
    image = load_image(source[0].image)
    assert image.size == source[0].image_size == (612, 612)


def test_check_dataset_reports_the_three_missing_images(tmp_path: Path) -> None:
    report = check_dataset("refcoco", FIXTURE)
    assert {s: report["splits"][s]["expressions"] for s in ("val", "testA", "testB")} == {
        "val": 6,
        "testA": 6,
        "testB": 6,
    }
    assert report["total"]["images"] == 3 and report["total"]["images_missing"] == 3
    assert {Path(p).name for p in report["total"]["missing_examples"]} == set(FIXTURE_IMAGES)
    assert report["ok"] is False
    text = format_check_report(report)
    assert "COCO_train2014_000000495169.jpg" in text and "testB" in text

    for name, size in list(FIXTURE_IMAGES.items())[:2]:  # two of three present
        _stand_in(tmp_path / name, size)
    report = check_dataset("refcoco", FIXTURE, splits=["val", "testA", "testB"], image_root=tmp_path)
    assert report["total"]["images_missing"] == 1
    assert report["total"]["missing_examples"] == [str(tmp_path / "COCO_train2014_000000572949.jpg")]


def test_data_check_cli_json_and_text(capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_data_check_arguments(parser)
    args = parser.parse_args(["--data", "refcocog", "--data-root", str(FIXTURE), "--split", "val", "--json"])
    assert run_data_check(args) == 1  # images missing
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["val"]["expressions"] == 4 and report["splits"]["val"]["images_missing"] == 1

    args = parser.parse_args(["--data", "refcoco+", "--data-root", str(FIXTURE)])
    assert run_data_check(args) == 1
    assert "missing image" in capsys.readouterr().out

    args = parser.parse_args(["--data", "refcoco", "--data-root", str(FIXTURE), "--split", "nope"])
    assert run_data_check(args) == 2
    assert "nope" in capsys.readouterr().out


# --- the restricted unpickler ---------------------------------------------------------------------------------


class _ShellPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps([_ExecPayload(control)]))  # an ordinary unpickler runs the payload ...
    assert control.exists()

    for payload_class, culprit in ((_ShellPayload, "system"), (_ExecPayload, "exec")):
        for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
            marker = tmp_path / f"pwned-{payload_class.__name__}-{protocol}"
            data = pickle.dumps([{"ref_id": 1, "split": "val"}, payload_class(marker)], protocol=protocol)
            with pytest.raises(DataError, match=culprit):  # ... the restricted one refuses, naming the callable
                restricted_load(data)
            assert not marker.exists()

    # and through the dataset loader
    marker = tmp_path / "pwned-loader"
    folder = tmp_path / "root" / "refcoco"
    folder.mkdir(parents=True)
    (folder / "refs(unc).p").write_bytes(pickle.dumps([_ShellPayload(marker)]))
    (folder / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match=r"refused pickle.*system"):
        open_dataset("refcoco", data_root=tmp_path / "root", split="val")
    assert not marker.exists()


def test_restricted_load_plain_data_and_python2_strings() -> None:
    data = {"ref_id": 3, "sentences": [{"sent": "man left", "sent_id": 7}], "box": [1.5, 2.0], "ok": True}
    assert restricted_load(pickle.dumps(data)) == data
    # A Python-2 pickle of a list of byte strings (SHORT_BINSTRING), one UTF-8, one Latin-1.
    py2 = b"\x80\x02]q\x00(U\x05helloq\x01U\x04caf\xe9q\x02U\x05caf\xc3\xa9q\x03e."
    assert restricted_load(py2) == ["hello", "café", "café"]
    with pytest.raises(DataError, match="not a readable pickle"):
        restricted_load(pickle.dumps(data)[:-5])


# --- corrupt rows and bad input -------------------------------------------------------------------------------


def test_refer_corrupt_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}]
    square = [[10, 10, 50, 10, 50, 40, 10, 40]]
    annotations = [
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30], "segmentation": square, "area": 1200},
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 30], "segmentation": square},  # zero width
        {"id": 13, "image_id": 1, "category_id": 1, "bbox": "oops", "segmentation": square},
        {"id": 14, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "segmentation": square},  # unknown image
    ]

    def ref(ref_id: int, ann_id: int, sentences: list) -> dict:
        return {
            "ref_id": ref_id,
            "ann_id": ann_id,
            "image_id": 1,
            "split": "val",
            "category_id": 1,
            "sentences": sentences,
        }

    sents = [{"sent": "the box", "raw": "The box", "sent_id": 1}, {"sent": "square", "sent_id": 2}]
    refs = [
        ref(1, 11, sents),
        ref(2, 99, sents),  # annotation missing
        ref(3, 12, sents),
        ref(4, 13, sents),
        {**ref(5, 14, sents), "image_id": 2},
        ref(6, 11, []),  # no sentences
        ref(7, 11, [{"sent": "", "sent_id": 9}, {"sent": "ok", "sent_id": 10}]),  # one empty sentence
        "not a ref",
        {**ref(8, 11, sents), "split": "train"},
    ]
    root = _write_refer(tmp_path, refs, annotations, images)
    source = open_dataset("refcoco", data_root=root, split="val")
    assert [s.expression for s in source] == ["the box", "square", "ok"]
    assert len(source.problems) == 7
    assert any("annotation 99" in p for p in source.problems)
    assert source[0].box == (10.0, 10.0, 50.0, 40.0)
    assert source[0].mask().sum() == pytest.approx(1200, rel=0.01)
    report = check_dataset("refcoco", root, splits=["val"])
    assert report["splits"]["val"]["unreadable_rows"] == 7
    assert report["splits"]["val"]["images_missing"] == 1 and report["splits"]["val"]["images"] == 1
    assert len(open_dataset("refcoco", data_root=root, split="train")) == 2


def test_bad_inputs_raise_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _write_refer(tmp_path, [], [], [])
    with pytest.raises(DataError, match="testC"):
        open_dataset("refcoco", data_root=root, split="testC")
    with pytest.raises(DataError, match=r"refs\(umd\)\.p"):
        open_dataset("refcocog", data_root=root, split="val")
    with pytest.raises(DataError, match="unknown dataset"):
        open_dataset("imagenet", data_root=root, split="val")
    monkeypatch.delenv("LOCALIZE_DATA_ROOT", raising=False)
    with pytest.raises(DataError, match="data root"):
        open_dataset("refcoco", split="val")
    monkeypatch.setenv("LOCALIZE_DATA_ROOT", str(root))
    assert len(open_dataset("refcoco", split="val")) == 0
    (root / "refcoco" / "instances.json").write_text("{not json")
    with pytest.raises(DataError, match="instances.json"):
        open_dataset("refcoco", data_root=root, split="val")


# --- parquet mirrors ------------------------------------------------------------------------------------------


def test_parquet_lmms_layout_round_trip(tmp_path: Path) -> None:
    rows = {
        "question_id": ["q1", "q2", "q3", "q4"],
        "image": [
            {"bytes": _jpeg_bytes((64, 48)), "path": "a.jpg"},
            {"bytes": _jpeg_bytes((32, 40)), "path": "b.jpg"},
            {"bytes": _jpeg_bytes((32, 40)), "path": "b.jpg"},
            {"bytes": _jpeg_bytes((32, 40)), "path": "b.jpg"},
        ],
        "question": ["Provide a short description for this region."] * 4,
        "answer": [["red thing left", "the left one"], ["blue box"], [], ["bad box"]],
        "bbox": [[4.0, 6.0, 20.0, 10.0], [0.0, 0.0, 16.0, 20.0], [1.0, 1.0, 2.0, 2.0], [1.0, 1.0, -2.0, 2.0]],
        "segmentation": [[4.0, 6.0, 24.0, 6.0, 24.0, 16.0, 4.0, 16.0], [0.0, 0.0, 16.0, 0.0, 16.0, 20.0], [], []],
        "iscrowd": [0, 0, 0, 0],
        "file_name": ["COCO_train2014_a.jpg", "COCO_train2014_b.jpg", "x.jpg", "y.jpg"],
    }
    folder = tmp_path / "lmms" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.table(rows), folder / "val-00000-of-00001.parquet", row_group_size=2)
    pq.write_table(pa.table({k: v[:1] for k, v in rows.items()}), folder / "testA-00000-of-00001.parquet")

    source = open_dataset(f"parquet:{tmp_path / 'lmms'}", split="val")
    assert [s.expression for s in source] == ["red thing left", "the left one", "blue box"]
    assert len(source.problems) == 2  # no expression; negative width
    first, _, third = list(source)
    assert first.box == (4.0, 6.0, 24.0, 16.0) and first.image_size == (64, 48)
    assert first.sample_id.endswith("/q1/sent0") and first.meta["question_id"] == "q1"
    assert first.mask().sum() == pytest.approx(200, rel=0.05)
    assert load_image(first.image).size == (64, 48)
    assert third.box == (0.0, 0.0, 16.0, 20.0) and load_image(third.image).size == (32, 40)
    assert len(open_dataset(f"parquet:{tmp_path / 'lmms'}", split="testA")) == 2
    with pytest.raises(DataError, match="testB"):
        open_dataset(f"parquet:{tmp_path / 'lmms'}", split="testB")

    report = check_dataset(f"parquet:{tmp_path / 'lmms'}", None)  # splits from file names
    assert set(report["splits"]) == {"val", "testA"}
    assert report["splits"]["val"]["expressions"] == 3 and report["splits"]["val"]["unreadable_rows"] == 2
    assert report["splits"]["val"]["images_missing"] == 0


def test_parquet_jxu124_layout_with_image_root(tmp_path: Path) -> None:
    def row(ref_id: int, split: str, sentences: list, image: str) -> dict:
        ann = {"id": 100 + ref_id, "bbox": [2.0, 3.0, 10.0, 12.0], "segmentation": [[2, 3, 12, 3, 12, 15, 2, 15]]}
        info = {"id": ref_id, "file_name": image, "width": 40, "height": 30}
        return {
            "ref_id": ref_id,
            "ann_id": 100 + ref_id,
            "image_id": ref_id,
            "split": split,
            "sentences": sentences,
            "sent_ids": [s["sent_id"] for s in sentences],
            "bbox": [2.0, 3.0, 12.0, 15.0],  # xyxy in this layout
            "raw_anns": json.dumps(ann),
            "raw_image_info": json.dumps(info),
            "image_path": f"coco/train2014/{image}",
            "file_name": image.replace(".jpg", f"_{100 + ref_id}.jpg"),
        }

    sent = [{"raw": "Man on left", "sent": "man on left", "sent_id": 5}, {"raw": "guy", "sent": "guy", "sent_id": 6}]
    table = pa.Table.from_pylist(
        [row(1, "val", sent, "COCO_train2014_1.jpg"), row(2, "val", sent[:1], "COCO_train2014_2.jpg")]
    )
    folder = tmp_path / "jxu"
    folder.mkdir()
    pq.write_table(table, folder / "validation-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([row(3, "train", sent, "COCO_train2014_3.jpg")]), folder / "train-0.parquet")
    images = tmp_path / "images"
    _stand_in(images / "coco/train2014/COCO_train2014_1.jpg", (40, 30))

    source = open_dataset(f"parquet:{folder}", split="val", image_root=images)
    assert [s.expression for s in source] == ["man on left", "guy", "man on left"]
    sample = source[0]
    assert sample.box == (2.0, 3.0, 12.0, 15.0) and sample.image_size == (40, 30)
    assert sample.meta["sent_id"] == 5 and sample.meta["ref_id"] == 1
    assert sample.mask().sum() == pytest.approx(120, rel=0.05)
    assert load_image(sample.image).size == (40, 30)
    with pytest.raises(ImageError, match="COCO_train2014_2.jpg"):  # missing file: an error only when loaded
        load_image(source[2].image)
    # image_root pointing straight at train2014 also works
    assert Path(open_dataset(f"parquet:{folder}", split="val", image_root=images / "coco/train2014")[0].image).exists()
    # a single file with a split column: rows are filtered by it
    single = open_dataset(f"parquet:{folder / 'validation-00000-of-00001.parquet'}", split="train")
    assert len(single) == 0
    report = check_dataset(f"parquet:{folder}", None, splits=["val"], image_root=images)
    assert report["splits"]["val"]["images"] == 2 and report["splits"]["val"]["images_missing"] == 1


def test_parquet_hub_id_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="offline"):
        open_dataset("parquet:localize-tests-nonexistent/refcoco-nope", split="val")
    with pytest.raises(DataError, match="neither an existing file"):
        open_dataset(f"parquet:{tmp_path / 'missing.parquet'}", split="val")


# --- ReasonSeg ------------------------------------------------------------------------------------------------


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _flat(points: list[list[float]]) -> list[float]:
    return [v for p in points for v in p]


def test_reasonseg_round_trip(tmp_path: Path) -> None:
    val = tmp_path / "ReasonSeg" / "val"
    _stand_in(val / "img1.jpg", (64, 48))
    big_target, small_ignore = _rect(0, 0, 40, 30), _rect(10, 10, 20, 20)
    big_ignore, small_target = _rect(44, 0, 64, 48), _rect(50, 20, 56, 30)
    shapes = [
        {"label": "target", "points": big_target, "shape_type": "polygon"},
        {"label": "ignore", "points": small_ignore, "shape_type": "polygon"},
        {"label": "ignore", "points": big_ignore, "shape_type": "polygon"},
        {"label": "target", "points": small_target, "shape_type": "polygon"},
        {"label": "flag", "points": _rect(0, 0, 64, 48)},
    ]
    (val / "img1.json").write_text(
        json.dumps({"text": ["what is red?", "the thing"], "is_sentence": False, "shapes": shapes})
    )
    _stand_in(val / "img2.jpg", (30, 20))
    (val / "img2.json").write_text(
        json.dumps(
            {
                "text": "Which object would you sit on?",
                "is_sentence": True,
                "shapes": [{"label": "target", "points": _rect(5, 5, 15, 10)}],
            }
        )
    )
    (val / "img3.json").write_text(json.dumps({"text": ["nothing"], "is_sentence": False, "shapes": []}))
    (val / "img4.json").write_text(  # image absent, size in the JSON
        json.dumps(
            {
                "text": ["far"],
                "is_sentence": False,
                "imageWidth": 10,
                "imageHeight": 10,
                "shapes": [{"label": "target", "points": _rect(1, 1, 4, 4)}],
            }
        )
    )

    source = open_dataset("reasonseg", data_root=tmp_path, split="val")
    assert [s.expression for s in source] == ["what is red?", "the thing", "Which object would you sit on?", "far"]
    assert len(source.problems) == 1 and "img3" in source.problems[0]
    sample = source[0]
    assert sample.sample_id == "reasonseg/val/img1/q0" and sample.image_size == (64, 48)

    def raster(points: list[list[float]]) -> np.ndarray:
        return decode_segmentation([_flat(points)], (64, 48))

    # LISA paints largest first: a small shape inside a larger one wins
    expected_target = (raster(big_target) & ~raster(small_ignore)) | raster(small_target)
    expected_ignore = raster(small_ignore) | (raster(big_ignore) & ~raster(small_target))
    np.testing.assert_array_equal(sample.mask(), expected_target)
    np.testing.assert_array_equal(sample.ignore_mask(), expected_ignore)
    ys, xs = np.nonzero(expected_target)
    assert sample.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert source[2].meta["is_sentence"] is True and source[2].ignore_mask() is None
    assert load_image(source[2].image).size == (30, 20)

    assert [s.expression for s in open_dataset("reasonseg", data_root=tmp_path, split="val_long")] == [
        "Which object would you sit on?"
    ]
    assert len(open_dataset("reasonseg", data_root=tmp_path, split="val_short")) == 3
    assert pickle.loads(pickle.dumps(source))[0].mask().sum() == sample.mask().sum()  # for worker processes
    report = check_dataset("reasonseg", tmp_path)
    assert list(report["splits"]) == ["val"]
    assert report["splits"]["val"]["images"] == 3 and report["splits"]["val"]["images_missing"] == 1
    assert report["splits"]["val"]["unreadable_rows"] == 1


# --- the shapes world ---------------------------------------------------------------------------------------


def test_open_dataset_shapes() -> None:
    source = open_dataset("shapes", split="val", size=2)
    assert len(source) == 2 and source[0].split == "val"
    with pytest.raises(DataError, match="shapes"):
        open_dataset("shapes", split="holdout")


def test_one_registry_knows_every_dataset() -> None:
    from localize.data.registry import DATASETS, dataset_spec, paper_columns

    assert dataset_spec("RefCOCO_plus") is DATASETS["refcoco+"] and dataset_spec("shapes").procedural
    assert paper_columns()[:3] == [("refcoco", "val"), ("refcoco", "testA"), ("refcoco", "testB")]
    assert len(paper_columns()) == 8 and dataset_spec("parquet:/x").name == "parquet:/x"
    with pytest.raises(DataError, match="unknown dataset"):
        dataset_spec("imagenet")
