"""Bad input and faults, as a hostile but fair user meets them: every case exits with a one-line message that
names the problem (2: refused; 1: ran but found problems), never a traceback, never 0 with a wrong or empty
result. Python-API cases raise the toolkit's own errors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import localize
from localize.cli import main
from localize.data.shapes import VOCABULARY
from localize.errors import HeadsMismatchError, ImageError, InputError, LocalizeError, UnknownModelError

# -- shared inputs --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An image, a saved tiny LLaVA (shapes vocabulary) and its heads file, and broken variants of each."""
    from localize.headsfile import HeadsFile, save_heads
    from localize.testing import tiny_llava

    root = tmp_path_factory.mktemp("bad")
    image = root / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(image)
    model, processor = tiny_llava(words=VOCABULARY)
    good = root / "model"
    model.save_pretrained(good)
    processor.save_pretrained(good)
    heads = root / "heads.json"
    save_heads(heads, HeadsFile(num_layers=4, num_heads=4, heads=[(2, 1), (3, 0)], model_type="llava"))
    return {"root": root, "image": str(image), "model": str(good), "heads": str(heads)}


def _copy_model(files, name: str) -> Path:
    """A copy of the good model folder to break."""
    import shutil

    target = files["root"] / name
    if not target.exists():
        shutil.copytree(files["model"], target)
    return target


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of one CLI call; SystemExit (argparse) counts as its code."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return code, captured.err


def _ground(files, *extra: str, image: str | None = None, phrase: str = "the red circle") -> list[str]:
    return ["ground", image or files["image"], phrase, "--model", files["model"], "--heads", files["heads"], *extra]


# -- CLI: images ----------------------------------------------------------------------------------------------


def _write(root: Path, name: str, data: bytes) -> str:
    path = root / name
    path.write_bytes(data)
    return str(path)


IMAGE_CASES = {
    "missing file": (lambda root: str(root / "nope.png"), "image not found"),
    "a directory": (lambda root: str(root), "cannot read image"),
    "a text file": (lambda root: _write(root, "notes.png", b"hello, not a picture"), "cannot read image"),
    "zero bytes": (lambda root: _write(root, "empty.jpg", b""), "cannot read image"),
    "truncated png": (
        lambda root: _write(root, "cut.png", (root / "scene.png").read_bytes()[:200]),
        "cannot read image",
    ),
    "a URL": (lambda root: "https://example.com/cat.jpg", "URLs are not fetched"),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_unreadable_images_are_one_line_errors(files, capsys, case):
    make, message = IMAGE_CASES[case]
    code, err = _run(_ground(files, image=make(files["root"])), capsys)
    assert code == 2 and message in err


def test_an_image_past_the_decompression_bomb_limit(files, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 96 x 80 = 7680 > 2 x 1000: PIL's bomb error
    code, err = _run(_ground(files), capsys)
    assert code == 2 and "more pixels than" in err


def test_a_very_large_image_is_reduced_early_and_grounded_in_its_own_pixels(files, tmp_path, capsys, monkeypatch):
    import localize.images

    monkeypatch.setattr(localize.images, "MAX_SIDE", 64)  # the 96 x 80 image counts as very large
    out = tmp_path / "g.json"
    code, _ = _run(_ground(files, "--out", str(out), "--device", "cpu"), capsys)
    result = json.loads(out.read_text())
    assert code == 0 and result["image_size"] == [96, 80]
    x0, y0, x1, y1 = result["results"][0]["box"]
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 80


@pytest.mark.parametrize("size", [(100, 80), (105, 86), (92, 75)], ids=["exact", "stretched", "cut"])
@pytest.mark.parametrize("where", ["corner", "middle", "empty", "full"])
def test_masks_of_reduced_images_are_repeated_back_to_full_size(size, where):
    """The full-size mask of a reduced image equals plain repetition (the last row / column stretched or cut), is
    column-major (RLE needs no copy) and is written only around the mask's pixels."""
    from localize.grounder import _upsampled

    small = np.zeros((8, 10), bool)
    if where == "corner":
        small[6:, 7:] = True
    elif where == "middle":
        small[2:5, 3:6] = np.random.default_rng(0).random((3, 3)) > 0.3
    elif where == "full":
        small[:] = True
    width, height = size
    rows, cols = np.minimum(np.arange(height) // 10, 7), np.minimum(np.arange(width) // 10, 9)
    full = _upsampled(small, 10, size)
    assert full.shape == (height, width) and full.flags.f_contiguous
    np.testing.assert_array_equal(full, small[rows][:, cols])


# -- CLI: phrases ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phrase, message",
    [("", "empty"), ("   ", "empty"), ("dog " * 5000, "longer than the model's context")],
    ids=["empty", "blank", "too long"],
)
def test_unusable_phrases(files, capsys, phrase, message):
    code, err = _run(_ground(files, phrase=phrase), capsys)
    assert code == 2 and message in err


def test_noun_chunks_take_one_sentence(files, capsys):
    argv = ["ground", files["image"], "the red circle", "the dog", "--noun-chunks", "--model", files["model"]]
    code, err = _run([*argv, "--heads", files["heads"]], capsys)
    assert code == 2 and "one sentence" in err


def test_unknown_words_are_reported_with_the_box(tmp_path, capsys):
    """The embedded model's word-level tokenizer: words it has never seen are named in the output and the JSON."""
    out = tmp_path / "g.json"
    image = tmp_path / "scene.png"
    Image.new("RGB", (64, 64), (30, 30, 30)).save(image)
    code = main(["ground", str(image), "the zebra beside the xylophone", "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0 and "unknown words" in printed.err and "zebra" in printed.err
    assert json.loads(out.read_text())["results"][0]["unknown_words"] == ["zebra", "beside", "xylophone"]


def test_case_and_punctuation_are_normalised_for_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "g.json"
    image = tmp_path / "scene.png"
    Image.new("RGB", (64, 64), (30, 30, 30)).save(image)
    assert main(["ground", str(image), "The Red Circle.", "--out", str(out), "--device", "cpu"]) == 0
    assert "unknown words" not in capsys.readouterr().err
    loud, plain = (localize.load("shapes-tiny").ground(str(image), p) for p in ("The RED circle!", "the red circle"))
    assert loud.box == plain.box and loud.meta["unknown_words"] == []


# -- CLI: models ----------------------------------------------------------------------------------------------


def _no_config(files):
    folder = _copy_model(files, "no-config")
    (folder / "config.json").unlink(missing_ok=True)
    return str(folder)


def _broken_config(files):
    folder = _copy_model(files, "broken-config")
    (folder / "config.json").write_text('{"model_type": "llava", ')
    return str(folder)


def _default_size_config(files):
    """A config that says only ``llava``: transformers would build a default-size 7B model beside tiny weights."""
    folder = _copy_model(files, "default-size")
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    return str(folder)


def _no_weights(files):
    folder = _copy_model(files, "no-weights")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    return str(folder)


def _truncated_weights(files):
    folder = _copy_model(files, "truncated")
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:1000])
    return str(folder)


def _other_model_type(files):
    folder = files["root"] / "llama"
    if not folder.exists():
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
        LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


MODEL_CASES = {
    "unknown alias": (lambda files: "llava-1.5-7", "Did you mean"),
    "no config.json": (_no_config, "no config.json"),
    "broken config.json": (_broken_config, "config.json"),
    "config without the model's size": (_default_size_config, "do not match"),
    "no weight files": (_no_weights, "no weight files"),
    "truncated weights": (_truncated_weights, "weights"),
    "unsupported model_type": (_other_model_type, "no adapter for model_type 'llama'"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model_folders_that_cannot_load(files, capsys, case):
    make, message = MODEL_CASES[case]
    argv = ["ground", files["image"], "the dog", "--model", make(files), "--heads", "L2 H1", "--device", "cpu"]
    code, err = _run(argv, capsys)
    assert code == 2 and message in err
    assert "offline mode" not in err or case == "unknown alias"


def test_a_config_of_another_size_is_refused_before_allocating(files):
    import resource
    import time

    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(LocalizeError, match="do not match"):
        localize.load_model(_default_size_config(files), device="cpu")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert time.perf_counter() - start < 5 and grown_mb < 1000  # a 7B build would take ~25 GB


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "bogus"], "device"),
        (["--device", "cuda:7"], "CUDA"),
        (["--dtype", "int8"], "dtype"),
    ],
    ids=["bogus device", "absent GPU", "int8 dtype"],
)
def test_devices_and_dtypes_that_cannot_run(files, capsys, flags, message):
    if flags[1].startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    code, err = _run([*_ground(files), *flags], capsys)
    assert code == 2 and message in err


# -- CLI: heads -----------------------------------------------------------------------------------------------


def _heads_file(files, name: str, content) -> str:
    path = files["root"] / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _heads_dict(**changes):
    base = {"format_version": 1, "num_layers": 4, "num_heads": 4, "heads": [[2, 1]], "model_type": "llava"}
    return {**base, **changes}


HEADS_CASES = {
    "missing heads file": (lambda files: str(files["root"] / "none.json"), "heads file not found"),
    "not JSON": (lambda files: _heads_file(files, "h1.json", "{heads"), "cannot read heads file"),
    "a JSON list": (lambda files: _heads_file(files, "h2.json", [[2, 1]]), "is not a heads file"),
    "float heads": (lambda files: _heads_file(files, "h3.json", _heads_dict(heads=[[3.7, 1.2]])), "integers"),
    "head past the model": (lambda files: "L9 H0", "does not fit"),
    "head index past the heads": (lambda files: "L2 H9", "does not fit"),
    "malformed spec": (lambda files: "L2 H", "cannot read heads"),
    "another family": (lambda files: _heads_file(files, "h4.json", _heads_dict(model_type="qwen2_vl")), "qwen2_vl"),
    "another shape": (lambda files: _heads_file(files, "h5.json", _heads_dict(num_layers=32, num_heads=32)), "32"),
    "another grid": (lambda files: _heads_file(files, "h6.json", _heads_dict(grid=[24, 24])), "24x24"),
    "no heads in the file": (lambda files: _heads_file(files, "h7.json", _heads_dict(heads=[])), "no heads"),
}


@pytest.mark.parametrize("case", list(HEADS_CASES))
def test_heads_that_do_not_fit(files, capsys, case):
    make, message = HEADS_CASES[case]
    argv = ["ground", files["image"], "the dog", "--model", files["model"], "--heads", make(files), "--device", "cpu"]
    code, err = _run(argv, capsys)
    assert code == 2 and message in err


def test_a_heads_file_made_for_another_checkpoint_of_the_family_warns(files, capsys):
    other = _heads_file(files, "h8.json", _heads_dict(model="someone/other-llava", grid=[6, 6]))
    code, err = _run(_ground(files)[:-2] + ["--heads", other, "--device", "cpu"], capsys)
    assert code == 0 and "made for someone/other-llava" in err


# -- CLI: SAM -------------------------------------------------------------------------------------------------


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/localize-pwned",))


@pytest.mark.parametrize("kind", ["missing", "garbage", "malicious pickle"])
def test_bad_sam_checkpoints_are_refused_without_running_code(files, capsys, kind):
    path = files["root"] / f"sam-{kind.replace(' ', '-')}.pth"
    if kind == "garbage":
        path.write_bytes(b"\x00not a checkpoint")
    elif kind == "malicious pickle":
        path.write_bytes(pickle.dumps({"w": _Boom()}))
    code, err = _run([*_ground(files), "--sam", str(path), "--sam-type", "vit_b", "--device", "cpu"], capsys)
    assert code == 2 and "SAM checkpoint" in err
    assert "weights_only=False" not in err and not Path("/tmp/localize-pwned").exists()


# -- CLI: outputs ---------------------------------------------------------------------------------------------


def _readonly(root: Path) -> Path:
    folder = root / "readonly"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return folder


OUTPUT_CASES = {
    "read-only directory": (lambda root: str(_readonly(root) / "g.json"), "cannot write"),
    "inside a file": (lambda root: str(root / "scene.png" / "g.json"), "cannot write"),
    "a directory": (lambda root: str(root), "is a directory"),
}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
@pytest.mark.parametrize("flag", ["--out", "--viz"])
def test_unwritable_outputs_as_root_cannot_see_them(files, capsys, flag):  # pragma: no cover - not as root
    code, err = _run([*_ground(files), flag, OUTPUT_CASES["read-only directory"][0](files["root"])], capsys)
    assert code == 2 and "cannot write" in err


@pytest.mark.parametrize("case", ["inside a file", "a directory"])
@pytest.mark.parametrize("flag", ["--out", "--viz"])
def test_unwritable_outputs_are_refused_before_the_work(files, capsys, monkeypatch, case, flag):
    import localize.grounder

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(localize.grounder, "load_model", no_model)
    make, message = OUTPUT_CASES[case]
    code, err = _run([*_ground(files), flag, make(files["root"])], capsys)
    assert code == 2 and message in err


def test_a_write_that_fails_after_the_work_keeps_the_results(files, tmp_path, capsys, monkeypatch):
    import localize.files

    real = localize.files.atomic_write_text

    def disk_full(path, text):
        if Path(path).name == "g.json":
            raise OSError(28, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(localize.files, "atomic_write_text", disk_full)
    code, err = _run([*_ground(files), "--out", str(tmp_path / "g.json"), "--device", "cpu"], capsys)
    assert code == 2 and "No space left" in err and "kept in" in err
    kept = Path(err.split("kept in ")[1].split()[0].rstrip(";,."))
    assert json.loads(kept.read_text())["results"][0]["phrase"] == "the red circle"


# -- CLI: discover --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, code, message",
    [
        (["--tau", "2"], 1, "no head"),
        (["--samples", "0"], 2, "--samples"),
        (["--top-k", "0"], 2, "--top-k"),
        (["--data", "imagenet"], 2, "unknown dataset"),
    ],
    ids=["tau above every head", "no samples", "no heads asked", "unknown dataset"],
)
def test_discover_refuses_or_reports(files, tmp_path, capsys, flags, code, message):
    argv = ["discover", "--model", files["model"], "--data", "shapes", "--split", "val", "--samples", "3"]
    argv += ["--per-sample", "2", "--out", str(tmp_path / "h.json"), "--device", "cpu", "--no-progress", *flags]
    got, err = _run(argv, capsys)
    assert got == code and message in err
    if code:
        assert not (tmp_path / "h.json").exists()


# -- CLI: the error boundary ----------------------------------------------------------------------------------


def test_debug_shows_the_traceback(files, capsys, monkeypatch):
    monkeypatch.setenv("LOCALIZE_DEBUG", "1")
    with pytest.raises(ImageError):
        main(_ground(files, image=str(files["root"] / "nope.png")))
    monkeypatch.delenv("LOCALIZE_DEBUG")
    with pytest.raises(ImageError):
        main(["--debug", *_ground(files, image=str(files["root"] / "nope.png"))])


def test_an_unexpected_os_error_is_one_line(files, capsys, monkeypatch):
    import localize.commands.ground

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(localize.commands.ground, "build_localizer", denied)
    code, err = _run(_ground(files), capsys)
    assert code == 2 and "Permission denied" in err and "--debug" in err


def test_a_closed_pipe_ends_quietly(capsys, monkeypatch):
    import localize.cli

    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(localize.cli, "run_models", closed)
    code, err = _run(["models"], capsys)
    assert code == 141 and err == ""  # 128 + SIGPIPE, as a shell reports `localize models | head -1`


# -- Python API -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loc(files):
    return localize.load(files["model"], heads=files["heads"], device="cpu")


@pytest.mark.parametrize("phrase", [5, b"the dog", ["the dog"], None], ids=["int", "bytes", "list", "None"])
def test_phrases_that_are_not_strings(loc, files, phrase):
    with pytest.raises(InputError, match="not a string"):
        loc.ground(files["image"], phrase)


def test_empty_phrase_lists(loc, files):
    assert loc.ground_many(files["image"], []) == []  # a batch API: nothing in, nothing out
    with pytest.raises(InputError, match="no phrases"):
        loc.vlm.capture(files["image"], [])


def test_api_model_specs(files):
    with pytest.raises(UnknownModelError, match="model spec"):
        localize.load_model(None)
    with pytest.raises(UnknownModelError, match="model spec"):
        localize.load_model(42)
    with pytest.raises(InputError, match="heads must be 'auto'"):
        localize.load(files["model"], heads=None, device="cpu")  # refused by name, not a TypeError


def test_a_template_without_the_image_placeholder(files):
    with pytest.raises(InputError, match="<image>"):
        localize.load_model(files["model"], template="{phrase}", device="cpu")


@pytest.mark.parametrize("heads", [[(3.7, 1.2)], [(True, 1)], [("2", "1")], [(2,)]], ids=["float", "bool", "str", "1"])
def test_api_heads_that_are_not_integer_pairs(loc, heads):
    with pytest.raises((InputError, HeadsMismatchError)):
        localize.grounder.Localizer(loc.vlm, heads)


def test_uint16_and_float_arrays_are_scaled_not_clipped(loc):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
    plain = loc.ground(base, "the red circle")
    wide = loc.ground(base.astype(np.uint16) * 257, "the red circle")  # 0-65535
    unit = loc.ground(base.astype(np.float32) / 255.0, "the red circle")
    assert wide.box == plain.box == unit.box
    with pytest.raises(ImageError, match=r"\[-0.5, 0.5\]|undo any normalisation"):
        loc.ground(base.astype(np.float32) / 255.0 - 0.5, "the red circle")


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4, 4, 5), np.uint8), "HxW"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.zeros((4, 4, 3), complex), "not a picture"),
        (12, "unsupported image type"),
    ],
    ids=["no rows", "5 channels", "NaN", "complex", "an int"],
)
def test_api_images_that_are_not_pictures(loc, image, message):
    with pytest.raises(ImageError, match=message):
        loc.ground(image, "the red circle")


def test_odd_but_valid_images_ground(loc):
    for image in (Image.new("RGB", (1, 1)), Image.new("L", (300, 7)), Image.new("RGBA", (7, 300))):
        box = loc.ground(image, "the red circle").box
        assert 0 <= box[0] <= box[2] <= image.width and 0 <= box[1] <= box[3] <= image.height


# -- benchmarks: honest numbers -------------------------------------------------------------------------------

STAND_INS = {"COCO_train2014_000000495169.jpg": (640, 480), "COCO_train2014_000000510027.jpg": (640, 480)}


@pytest.fixture(scope="module")
def corrupt_refcoco(tmp_path_factory):
    """The RefCOCO fixture with an empty (``[]``) and a degenerate (``[[]]``) segmentation, one image gone from
    instances.json (its refs cannot be read), and stand-in images for the rest."""
    import shutil

    from conftest import FIXTURE_DIR

    root = tmp_path_factory.mktemp("corrupt")
    shutil.copytree(FIXTURE_DIR / "refcoco", root / "refcoco")
    path = root / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    instances["annotations"][0]["segmentation"] = []  # testA
    instances["annotations"][2]["segmentation"] = [[]]  # testB
    instances["images"] = [i for i in instances["images"] if i["id"] != 572949]
    path.write_text(json.dumps(instances))
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (width, height) in STAND_INS.items():
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(images / name)
    return {"root": str(root), "images": str(images), "anns": {instances["annotations"][i]["id"] for i in (0, 2)}}


def _bench(files, data, out, *extra):
    argv = ["bench", "--model", files["model"], "--heads", "L2 H0,L3 H1", "--data", "refcoco"]
    argv += ["--splits", "testA,testB,val"]  # testA: one empty segmentation, testB: one [[]], val: image gone
    argv += ["--data-root", data["root"], "--image-root", data["images"], "--out", str(out), "--device", "cpu"]
    return [*argv, "--gallery", "0", "--no-progress", *extra]


def test_empty_masks_and_dropped_refs_are_counted_not_hidden(files, corrupt_refcoco, tmp_path, capsys):
    code, err = _run(_bench(files, corrupt_refcoco, tmp_path / "b"), capsys)
    splits = {s["split"]: s for s in json.loads((tmp_path / "b" / "summary.json").read_text())["splits"]}
    rows = []
    for split in ("testA", "testB"):
        rows += [json.loads(line) for line in (tmp_path / "b" / "results" / "refcoco" / f"{split}.jsonl").open()]
    flagged = [r for r in rows if r.get("mask_problem")]
    assert code == 0 and len(flagged) == 6 and all(r["mask_u"] is None for r in flagged)  # REC scored, RES not
    assert {r["mask_problem"].split(" (")[0] for r in flagged} >= {"empty segmentation"}
    assert sum(s["n_mask_problem"] for s in splits.values()) == 6 and splits["testA"]["n"] == 6
    assert splits["testA"]["n_mask"] + splits["testB"]["n_mask"] == 6  # the two intact annotations
    assert splits["val"]["n"] == 0 and splits["val"]["skipped"] == 2  # its refs, dropped while reading
    assert "dropped while reading" in splits["val"]["skipped_examples"][0]
    assert "RES not scored" in (tmp_path / "b" / "summary.md").read_text()


def test_data_check_reports_empty_masks(corrupt_refcoco, capsys):
    argv = ["data", "check", "--data", "refcoco", "--data-root", corrupt_refcoco["root"]]
    argv += ["--image-root", corrupt_refcoco["images"], "--split", "testA"]  # its images and rows are all there
    assert main([*argv, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)["splits"]["testA"]
    assert report["mask_problems"] == 3 and report["unreadable_rows"] == 0 and report["images_missing"] == 0
    assert main(argv) == 1 and "mask (RES not scored)" in capsys.readouterr().out


def test_other_weights_at_the_same_path_are_refused(files, corrupt_refcoco, tmp_path, capsys):
    from localize.testing import tiny_llava

    folder = _copy_model(files, "retrained")
    argv = [a if a != files["model"] else str(folder) for a in _bench(files, corrupt_refcoco, tmp_path / "b")]
    assert _run([*argv, "--limit", "3"], capsys)[0] == 0
    tiny_llava(words=VOCABULARY, seed=1)[0].save_pretrained(folder)  # same path, new weights
    code, err = _run([*argv, "--limit", "5"], capsys)
    assert code == 2 and "weights" in err and "refusing to mix" in err


def test_a_smaller_limit_reports_the_rows_it_asked_for(files, corrupt_refcoco, tmp_path, capsys):
    argv = _bench(files, corrupt_refcoco, tmp_path / "b")
    assert _run([*argv, "--limit", "4"], capsys)[0] == 0
    assert _run([*argv, "--limit", "2"], capsys)[0] == 0
    splits = {s["split"]: s for s in json.loads((tmp_path / "b" / "summary.json").read_text())["splits"]}
    assert splits["testA"]["n"] == splits["testB"]["n"] == 2  # 4 of each are on disk


def test_a_second_concurrent_run_is_refused(files, corrupt_refcoco, tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / ".localize.lock").write_text(f"{os.getppid()}@{__import__('socket').gethostname()}")  # alive
    code, err = _run(_bench(files, corrupt_refcoco, out, "--limit", "1"), capsys)
    assert code == 2 and "another run" in err
    (out / ".localize.lock").write_text(f"999999999@{__import__('socket').gethostname()}")  # died
    assert _run(_bench(files, corrupt_refcoco, out, "--limit", "1"), capsys)[0] == 0
    assert not (out / ".localize.lock").exists()


def test_unknown_words_are_counted_in_bench_rows(tmp_path, capsys):
    argv = ["bench", "--model", "shapes-tiny", "--heads", "auto", "--data", "shapes", "--splits", "test"]
    assert main([*argv, "--limit", "2", "--gallery", "0", "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    total = json.loads((tmp_path / "b" / "summary.json").read_text())["total"]
    assert total["n"] == 2 and total["n_unknown_words"] == 0  # the shapes world's own words are known


def test_large_images_are_reduced_only_past_what_the_model_can_use(loc, tiny_qwen_vlm):
    """LLaVA sees 336 px, so a 3000-px image is reduced 3x on load (MAX_SIDE 1024); Qwen2.5-VL's processor would
    use a 12.8 M-pixel budget (a 3584-px square), so the same image reaches it whole."""
    from localize.grounder import Localizer
    from localize.images import original_size, reduced_by

    wide = Image.new("RGB", (3000, 200), (20, 20, 20))
    reduced = loc.load_image(wide)
    assert reduced.size == (1000, 67) and reduced_by(reduced) == 3 and original_size(reduced) == (3000, 200)
    qwen = Localizer(tiny_qwen_vlm, [(2, 1)])
    size = qwen.vlm.processor.image_processor.size
    budget = size.longest_edge
    size.longest_edge = 12845056
    try:
        assert qwen.vlm.adapter.max_input_side == 3585 and reduced_by(qwen.load_image(wide)) == 1
    finally:
        size.longest_edge = budget
