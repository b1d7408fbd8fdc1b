"""The discovery run: heads file + figures end to end on a tiny model, resume, shards, skipped samples, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FIXTURE_DIR
from localize.heads import (
    HeadsFile,
    attention_sum,
    finite_mean,
    load_heads,
    max_curvature_threshold,
    pseudo_mask_iou,
    select_heads,
    spatial_entropy,
    top_heads,
)
from localize.heads.discover import discover, draw_samples, read_sidecar, sidecar_files
from PIL import Image

from localize.data.registry import open_dataset
from localize.data.sample import GroundingSample
from localize.errors import DataError, HeadsMismatchError, InputError
from localize.models import VLM
from localize.published import load_heads_for
from localize.testing import tiny_llava

FIXTURE_IMAGES = {  # the fixture's COCO images (absent there): file name -> size
    "COCO_train2014_000000495169.jpg": (640, 480),
    "COCO_train2014_000000510027.jpg": (640, 480),
    "COCO_train2014_000000572949.jpg": (612, 612),
}
SPLITS = ("val", "testA", "testB")  # 6 expressions each, one image each


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _stand_ins(folder: Path, sizes: dict[str, tuple[int, int]] = FIXTURE_IMAGES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, size) in enumerate(sizes.items()):
        _noise(size, i).save(folder / name, quality=90)
    return folder


def _fixture_samples(image_root: Path) -> list[GroundingSample]:
    return [
        s
        for split in SPLITS
        for s in open_dataset("refcoco", data_root=FIXTURE_DIR, split=split, image_root=image_root)
    ]


def _synthetic(n: int = 6) -> list[GroundingSample]:
    """Lone in-memory images (one expression each) with masks: batched several images per forward."""
    out = []
    for i in range(n):
        size = (64 + 8 * i, 48)
        mask = np.zeros((48, size[0]), dtype=bool)
        mask[8:30, 4 + i : 30 + i] = True
        out.append(
            GroundingSample(
                f"synthetic/{i}",
                _noise(size, 100 + i),
                "the red circle on the left",
                (4 + i, 8, 30 + i, 30),
                size,
                mask_array=mask,
            )
        )
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[GroundingSample]:
    """18 RefCOCO fixture expressions over stand-in images (prefix reuse) + 6 lone in-memory samples."""
    return _fixture_samples(_stand_ins(tmp_path_factory.mktemp("images"))) + _synthetic()


@pytest.fixture(scope="module")
def full_run(tiny_llava_vlm, samples, tmp_path_factory):
    """An uninterrupted single-process run (batch_size 4), its sidecar and the forward passes it took."""
    folder = tmp_path_factory.mktemp("full")
    before = tiny_llava_vlm.capturer.forward_calls
    result = discover(
        tiny_llava_vlm,
        samples,
        per_sample=3,
        batch_size=4,
        sidecar=folder / "s.jsonl",
        out=folder / "heads.json",
        progress=False,
        seed=7,
    )
    return result, folder, tiny_llava_vlm.capturer.forward_calls - before


def _comparable(hf: HeadsFile) -> dict:
    data = hf.to_dict()
    data.pop("created")
    return data


def test_end_to_end_heads_file_and_figures(full_run, samples, tiny_llava_vlm):
    result, folder, forwards = full_run
    ids = [s.sample_id for s in samples]
    assert forwards < len(samples)  # one image's expressions share a prefix pass; lone images share a forward
    hf = load_heads(folder / "heads.json")
    assert _comparable(hf) == _comparable(result.heads_file)
    assert (hf.model, hf.model_type, hf.num_layers, hf.num_heads, hf.grid) == ("<in-memory>", "llava", 4, 4, (6, 6))
    assert hf.n_samples == len(samples) and hf.sample_ids == ids and hf.seed == 7
    assert hf.localize_version and hf.transformers_version
    for name in ("mean_sum", "mean_entropy", "frequency", "mean_iou"):
        stat = getattr(hf, name)
        assert np.isnan(stat[:2]).all() and np.isfinite(stat[2:]).all(), name  # layers 0-1 not scored
    assert ((hf.frequency[2:] >= 0) & (hf.frequency[2:] <= 1)).all()
    settings = hf.settings
    assert {"top_k", "per_sample", "criterion", "selection", "skip_layers", "weighting", "connectivity"} <= set(
        settings
    )
    assert settings["tau_method"] == "chord" and settings["tie_rule"] == "mean-entropy"
    assert settings["results"]["samples_with_mask"] == len(samples) and settings["results"]["samples_skipped"] == 0

    # Recompute the aggregation from the sidecar with the scoring functions: same tau, votes and heads.
    records = read_sidecar(folder / "s.jsonl")
    sums = np.stack([records[i]["sum"] for i in ids]).reshape(-1, 2, 4)
    entropy = np.stack([records[i]["entropy"] for i in ids]).reshape(-1, 2, 4)
    tau = max_curvature_threshold(sums.mean(0))
    assert hf.tau == pytest.approx(tau, rel=1e-5)
    counts = select_heads(entropy, sums, tau, per_sample=3)
    np.testing.assert_allclose(hf.frequency[2:], counts / len(ids), rtol=1e-5)
    frequency = np.zeros((4, 4))
    frequency[2:] = counts / len(ids)
    mean_entropy = np.full((4, 4), np.inf)
    mean_entropy[2:] = finite_mean(entropy)
    assert hf.heads == top_heads(frequency, mean_entropy, 3) and 1 <= len(hf.heads) <= 3
    assert all(layer >= 2 for layer, _ in hf.heads)

    # A sample's record equals a direct capture + scoring (lone capture: batching changes values only ~1e-6).
    sample = samples[0]
    maps = tiny_llava_vlm.capture(
        sample.image, [sample.expression], [(layer, h) for layer in (2, 3) for h in range(4)]
    )[0]
    arr = maps.maps.numpy()
    np.testing.assert_allclose(records[sample.sample_id]["sum"], attention_sum(arr), atol=1e-5)
    np.testing.assert_allclose(records[sample.sample_id]["entropy"], spatial_entropy(arr), atol=1e-4)
    iou = pseudo_mask_iou(arr, maps.geometry.mask_to_grid(sample.mask()) >= 0.5)
    np.testing.assert_allclose(records[sample.sample_id]["iou"], iou, atol=1e-4)

    for name, suffix in (("sum_curve", "_sum_curve"), ("frequency", "_frequency"), ("rank_iou", "_rank_iou")):
        path = result.paths[name]
        assert path == folder / f"heads{suffix}.png"
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_reaggregates_without_forward_passes(full_run, samples, tiny_llava_vlm):
    result, folder, _ = full_run
    before = tiny_llava_vlm.capturer.forward_calls
    kw = {"batch_size": 4, "sidecar": folder / "s.jsonl", "progress": False, "seed": 7}
    again = discover(tiny_llava_vlm, samples, per_sample=3, **kw)
    assert _comparable(again.heads_file) == _comparable(result.heads_file)
    n = len(samples)
    all_pass = discover(tiny_llava_vlm, samples, per_sample=3, tau=0.0, **kw)
    assert len(all_pass.heads) == 3 and all_pass.counts.sum() == 3 * n and all_pass.heads_file.tau == 0.0
    greedy = discover(tiny_llava_vlm, samples, mode="greedy", tau=0.0, **kw)
    assert greedy.counts.sum() == n  # one vote per sample
    by_sum = discover(tiny_llava_vlm, samples, criterion="sum", per_sample=2, tau=0.0, top_k=5, **kw)
    assert by_sum.counts.sum() == 2 * n and len(by_sum.heads) <= 5 and by_sum.heads_file.settings["criterion"] == "sum"
    assert tiny_llava_vlm.capturer.forward_calls == before


def test_resume_equals_uninterrupted(full_run, samples, tiny_llava_vlm, tmp_path):
    result, _, forwards = full_run
    sidecar = tmp_path / "s.jsonl"
    seen: list[str] = []

    def interrupt(sample_id: str) -> None:
        seen.append(sample_id)
        if len(seen) == 7:
            raise KeyboardInterrupt

    kw = {"per_sample": 3, "batch_size": 4, "sidecar": sidecar, "progress": False, "seed": 7}
    with pytest.raises(KeyboardInterrupt):
        discover(tiny_llava_vlm, samples, on_sample=interrupt, **kw)
    done = read_sidecar(sidecar)
    assert 7 <= len(done) < len(samples)
    with open(sidecar, "a", encoding="utf-8") as f:  # a line cut short by the interruption
        f.write('{"id": "synthetic/5", "grid": [6, 6], "sum": [0.1')
    before = tiny_llava_vlm.capturer.forward_calls
    resumed = discover(tiny_llava_vlm, samples, out=tmp_path / "heads.json", **kw)
    assert tiny_llava_vlm.capturer.forward_calls - before < forwards  # done samples were not recomputed
    assert _comparable(resumed.heads_file) == _comparable(result.heads_file)
    assert _comparable(load_heads(tmp_path / "heads.json")) == _comparable(result.heads_file)
    lines = sidecar.read_text().splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == 1 + len(samples)  # header + one line each


def test_two_shards_merge_equals_single_run(full_run, samples, tiny_llava_vlm, tmp_path):
    result = full_run[0]
    kw = {"per_sample": 3, "batch_size": 4, "sidecar": tmp_path / "s.jsonl", "progress": False, "seed": 7}
    assert discover(tiny_llava_vlm, samples, shard=(0, 2), **kw) is None  # shard 1 not done yet
    merged = discover(tiny_llava_vlm, samples, shard=(1, 2), out=tmp_path / "heads.json", **kw)
    assert [p.name for p in sidecar_files(tmp_path / "s.jsonl")] == ["s.rank0.jsonl", "s.rank1.jsonl"]
    shard_ids = [set(read_sidecar(tmp_path / f"s.rank{i}.jsonl")) for i in range(2)]
    assert shard_ids[0] and shard_ids[1] and not shard_ids[0] & shard_ids[1]
    assert shard_ids[0] | shard_ids[1] == {s.sample_id for s in samples}
    assert _comparable(merged.heads_file) == _comparable(result.heads_file)
    # A later single-process run over the shards' sidecar only aggregates.
    before = tiny_llava_vlm.capturer.forward_calls
    again = discover(tiny_llava_vlm, samples, **kw)
    assert tiny_llava_vlm.capturer.forward_calls == before
    assert _comparable(again.heads_file) == _comparable(result.heads_file)


def test_missing_and_mismatched_images_are_skipped_and_counted(tiny_llava_vlm, tmp_path):
    sizes = dict(FIXTURE_IMAGES)
    sizes.pop("COCO_train2014_000000495169.jpg")  # testA's image: missing
    sizes["COCO_train2014_000000510027.jpg"] = (320, 240)  # testB's: another size than annotated
    fixture = _fixture_samples(_stand_ins(tmp_path / "images", sizes))
    result = discover(
        tiny_llava_vlm,
        fixture,
        per_sample=3,
        sidecar=tmp_path / "s.jsonl",
        progress=False,
        unreadable=[("refcoco/#99", "DataError: corrupt row")],
    )
    reasons = dict(result.skipped)
    assert len(result.skipped) == 13 and reasons["refcoco/#99"] == "DataError: corrupt row"
    assert sum("image not found" in r for r in reasons.values()) == 6
    assert sum("mask is 640x480 but the image is 320x240" in r for r in reasons.values()) == 6
    hf = result.heads_file
    assert hf.n_samples == 6 and all("/val/" in i for i in hf.sample_ids)
    assert hf.settings["results"]["samples_skipped"] == 13 and hf.settings["results"]["samples_requested"] == 19
    # The image turns up: a rerun retries the skipped samples, keeps the scored ones.
    _noise((640, 480), 0).save(tmp_path / "images" / "COCO_train2014_000000495169.jpg")
    again = discover(tiny_llava_vlm, fixture, per_sample=3, sidecar=tmp_path / "s.jsonl", progress=False)
    assert again.heads_file.n_samples == 12 and len(again.skipped) == 6
    with pytest.raises(DataError, match="no sample could be scored"):
        discover(tiny_llava_vlm, fixture[12:], sidecar=tmp_path / "s2.jsonl", progress=False)


def test_heads_for_inference(full_run, tiny_llava_vlm, tmp_path):
    folder = full_run[1]
    heads, source = load_heads_for(tiny_llava_vlm, folder / "heads.json")
    assert heads == full_run[0].heads and source == str(folder / "heads.json")
    assert load_heads_for(tiny_llava_vlm, str(folder / "heads.json")).heads == full_run[0].heads
    assert load_heads_for(tiny_llava_vlm, full_run[0].heads_file).heads == full_run[0].heads
    other = VLM(*tiny_llava(layers=3))
    with pytest.raises(HeadsMismatchError, match="4 layers x 4 heads.*3 layers x 4 heads"):
        load_heads_for(other, folder / "heads.json")
    assert load_heads_for(tiny_llava_vlm, "L2 H1,L3 H0") == ([(2, 1), (3, 0)], "given")
    assert load_heads_for(tiny_llava_vlm, [(3, 3), [2, 0]]).heads == [(3, 3), (2, 0)]
    with pytest.raises(HeadsMismatchError, match="does not fit"):
        load_heads_for(other, "L3 H0")
    with pytest.raises(InputError):
        load_heads_for(tiny_llava_vlm, "layer fourteen")

    # "auto": heads.json in the model's folder, else the published registry, else run `localize discover`.
    with pytest.raises(HeadsMismatchError, match="localize discover"):
        load_heads_for(tiny_llava_vlm, "auto")
    exported = SimpleNamespace(spec=str(folder), num_layers=4, num_heads=4, model=None)
    assert load_heads_for(exported, "auto").heads == full_run[0].heads
    heads, source = load_heads_for(
        SimpleNamespace(spec="llava-1.5-7b", num_layers=32, num_heads=32, model=None), "auto"
    )
    assert heads == [(14, 24), (14, 13)] and "llava-hf/llava-1.5-7b-hf" in source
    cached = "/cache/hub/models--llava-hf--llava-1.5-13b-hf/snapshots/0123abcd"
    assert load_heads_for(SimpleNamespace(spec=cached, num_layers=40, num_heads=40, model=None), "AUTO").heads[0] == (
        15,
        39,
    )
    with pytest.raises(HeadsMismatchError, match="32 layers x 32 heads"):
        load_heads_for(VLM(*tiny_llava(), spec="llava-hf/llava-1.5-7b-hf"), "auto")


def test_draw_samples_seeded_with_failures():
    class Source:
        name, split = "toy", "train"

        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> SimpleNamespace:
            if i == 3:
                raise OSError("truncated row")
            return SimpleNamespace(sample_id=f"toy/{i}")

    order = np.random.default_rng(5).permutation(10)[:6].tolist()
    got, failed = draw_samples(Source(), 6, seed=5)
    assert [s.sample_id for s in got] == [f"toy/{i}" for i in order if i != 3]
    assert failed == ([("toy/train/#3", "OSError: truncated row")] if 3 in order else [])
    assert len(draw_samples(Source(), 50, seed=0)[0]) == 9


def test_qwen_dynamic_grids(tiny_qwen_vlm, tmp_path):
    samples = _synthetic(3)
    samples[0].image = _noise((120, 56), 9)  # another grid than the others
    samples[0].image_size = (120, 56)
    samples[0].mask_array = None
    result = discover(tiny_qwen_vlm, samples, per_sample=2, tau=0.0, progress=False, skip_layers=1)
    hf = result.heads_file
    assert hf.grid is None and len(hf.settings["results"]["grids"]) == 2
    assert hf.settings["results"]["samples_with_mask"] == 2 and np.isfinite(hf.mean_iou[1:]).all()
    assert len(hf.heads) == 3 and math.isnan(hf.mean_sum[0, 0])


def test_cli_discover_on_saved_model(tmp_path, capsys):
    from localize.cli import main

    model, processor = tiny_llava()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    images = _stand_ins(tmp_path / "images")
    out = tmp_path / "run" / "heads.json"
    argv = ["discover", "--model", str(tmp_path / "model"), "--data", "refcoco", "--data-root", str(FIXTURE_DIR)]
    argv += ["--split", "val", "--image-root", str(images), "--samples", "5", "--seed", "1", "--per-sample", "3"]
    argv += ["--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    hf = load_heads(out)
    split = open_dataset("refcoco", data_root=FIXTURE_DIR, split="val", image_root=images)
    expected = [split[int(i)].sample_id for i in np.random.default_rng(1).permutation(len(split))[:5]]
    assert hf.sample_ids == expected and hf.seed == 1 and hf.model == str(tmp_path / "model")
    assert hf.settings["data"]["split"] == "val" and hf.settings["data"]["samples"] == 5
    assert "localization heads: " + ", ".join(hf.heads_str) in printed and f"heads: {out}" in printed
    for suffix in ("_sum_curve", "_frequency", "_rank_iou"):
        assert (out.parent / f"heads{suffix}.png").stat().st_size > 1000
    assert (out.parent / "heads.sidecar.jsonl").is_file()

    assert main(argv) == 0  # complete sidecar: resumes with nothing to do
    assert "resuming: 5 already in" in capsys.readouterr().out
    assert _comparable(load_heads(out)) == _comparable(hf)
    assert main([*argv, "--weighting", "official"]) == 2  # the sidecar holds size-weighted entropies
    assert "other settings" in capsys.readouterr().err
    assert main([*argv, "--weighting", "official", "--fresh", "--tau-method", "kneedle-smooth", "--tie", "index"]) == 0
    printed = capsys.readouterr().out
    written = load_heads(out)
    assert written.settings["weighting"] == "official" and written.settings["tau_method"] == "kneedle-smooth"
    assert written.settings["tie_rule"] == "index" and "(kneedle-smooth; " in printed and "ties: index" in printed
    with pytest.raises(SystemExit):  # the retired name: a one-line error naming its replacements
        main([*argv, "--weighting", "mass"])
    assert "'official'" in capsys.readouterr().err
    again = [*argv, "--weighting", "official", "--tau-method", "kneedle-smooth", "--tie", "index"]
    assert main([*again, "--tau", "2"]) == 1  # no head can pass: says why, exits non-zero, no forward pass redone
    err = capsys.readouterr().err
    assert "no head was selected: tau = 2 is above every head's mean S_img" in err and "Traceback" not in err


def test_heads_of_another_family_or_float_heads_are_refused(full_run, tiny_llava_vlm, tmp_path):
    """A heads file of fitting size but made for another model type, and float heads, are refused by name."""
    from localize.headsfile import load_heads, save_heads

    folder = Path(full_run[0].paths["heads"]).parent
    other = load_heads(folder / "heads.json")
    other.model_type = "qwen2_5_vl"
    save_heads(tmp_path / "qwen.json", other)
    with pytest.raises(HeadsMismatchError, match="qwen2_5_vl model, but this model is llava"):
        load_heads_for(tiny_llava_vlm, tmp_path / "qwen.json")
    with pytest.raises(InputError, match="pair of integers"):
        load_heads_for(tiny_llava_vlm, [[3.7, 1.2]])
    with pytest.raises(InputError, match="pair of integers"):
        load_heads_for(tiny_llava_vlm, [(True, 1)])
    assert load_heads_for(tiny_llava_vlm, [(np.int64(3), 1)]).heads == [(3, 1)]
