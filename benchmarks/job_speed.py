"""Whole jobs, side by side in one run: ``bench`` and ``discover`` against the eager anchor and the floor.

    python -m localize.benchmarks.job_speed [--images 10 --per-image 7 --samples 20 --layers 8 --hidden 512 --threads 2]

On a random-weight LLaVA of realistic CPU shape (``capture_speed.realistic_llava``: 576 image tokens) saved to disk,
and a synthetic RefCOCO-like dataset in the refer layout (640x480 JPEGs, ``--per-image`` expressions each, written
to a temp dir). Each mode runs in its own process (its peak RSS above rest, with the weights paged in, is its own;
glibc's mmap threshold fixed, see MMAP_THRESHOLD) and times its work after the model is loaded (printed apart):

- ``bench``: the toolkit's bench loop (``run_split``: data loading, one capture per image with prefix reuse, maps ->
  box / mask, metrics, rows appended to JSONL), 3 heads at mid depth, REC + RES;
- ``bench_eager``: the anchor the official code and its peers use: per expression one ``output_attentions=True``
  forward, the 3 heads' rows taken from the returned tensors, the same box step, one JSON row each;
- ``bench_floor``: per image one batched SDPA forward of all its expressions, truncated after the deepest layer
  needed, no maps, no box: the least work any method must do;
- ``discover`` (all heads of every scored layer, per sample S_img and spatial entropy, the toolkit's
  ``heads.discover`` with its sidecar, 8 samples per forward as by default; ``discover_b1``: one), ``discover_eager`` (``output_attentions=True`` forward per sample and the
  same scoring on the returned maps) and ``discover_floor`` (a plain SDPA forward of every layer per sample).

Stage shares come from timers wrapped around the processor, the vision tower and the box step in the child (the
language model's share is what remains of the forward).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localize.benchmarks.capture_speed import _rss_kib

MODES = ("bench", "bench_eager", "bench_floor", "discover", "discover_b1", "discover_eager", "discover_floor")
WORDS = ("the", "man", "woman", "left", "right", "red", "car", "dog", "big", "small", "on", "of", "next", "to", "tree")


def write_dataset(root: Path, images: int, per_image: int, seed: int = 0) -> Path:
    """A RefCOCO-like refer folder under ``root``: ``images`` 640x480 JPEGs with ``per_image`` expressions each
    (one box and polygon per expression, phrases of 3-8 words), split ``val``; returns the data root."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder, image_dir = root / "refcoco", root / "images" / "mscoco" / "images" / "train2014"
    folder.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    image_rows, annotations, refs = [], [], []
    for i in range(images):
        name = f"COCO_train2014_{i:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(image_dir / name, quality=90)
        image_rows.append({"id": i + 1, "file_name": name, "width": 640, "height": 480})
        for _ in range(per_image):
            x, y = float(rng.integers(0, 440)), float(rng.integers(0, 300))
            w, h = float(rng.integers(60, 200)), float(rng.integers(60, 180))
            ann = len(annotations) + 1
            polygon = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            annotations.append({"id": ann, "image_id": i + 1, "category_id": 1, "bbox": [x, y, w, h],
                                "segmentation": polygon, "area": w * h})  # fmt: skip
            phrase = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9))))
            refs.append({"ref_id": ann, "ann_id": ann, "image_id": i + 1, "split": "val", "category_id": 1,
                         "sentences": [{"sent": phrase, "sent_id": ann}]})  # fmt: skip
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs))
    instances = {"images": image_rows, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (folder / "instances.json").write_text(json.dumps(instances))
    return root


class Stages:
    """Seconds spent in named stages, by wrapping callables (benchmark instrumentation only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: object, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)


def _instrument(vlm, stages: Stages) -> None:
    import localize.heads.discover

    import localize.grounder

    stages.wrap(vlm.adapter, "prepare", "preprocess")
    stages.wrap(vlm.model.model, "get_image_features", "vision")
    stages.wrap(localize.grounder, "maps_to_grounding", "box_mask")
    stages.wrap(localize.heads.discover, "spatial_entropy", "scoring")


def _heads(vlm) -> list[tuple[int, int]]:
    mid = vlm.num_layers * 14 // 32  # LLaVA-1.5-7B's published heads sit at L14 of 32
    return sorted({(mid, h % vlm.num_heads) for h in (1, 2, 5)})


def _bench_toolkit(vlm, data: Path, work: Path, stages: Stages) -> int:
    from localize.benchmarks.config import BenchConfig
    from localize.benchmarks.runner import run_split

    from localize.data.registry import open_dataset
    from localize.grounder import Localizer
    from localize.runs import process_state

    config = BenchConfig(model="job-speed", out=str(work), task="rec,res", gallery=0, no_progress=True)
    source = open_dataset("refcoco", data_root=data, split="val")
    found, _ = run_split(Localizer(vlm, _heads(vlm)), source, "refcoco", "val", config, work, process_state())
    return len(found)


def _bench_eager(vlm, data: Path, work: Path, stages: Stages) -> int:
    import torch
    from localize.benchmarks.metrics import box_iou

    import localize.grounder
    from localize.data.registry import open_dataset

    heads, source = _heads(vlm), open_dataset("refcoco", data_root=data, split="val")
    vlm.model.set_attn_implementation("eager")
    with (work / "eager.jsonl").open("w") as rows:
        for sample in source:
            image = sample.load_image()
            batch = vlm.adapter.prepare([image], [sample.expression])
            with torch.no_grad():
                out = vlm.model(**batch.inputs, output_attentions=True)
            query, view = int(batch.last_positions[0]), batch.views[0][0]
            maps = torch.stack([out.attentions[layer][0, head, query, view.positions] for layer, head in heads])
            grid = maps.reshape(len(heads), view.geometry.rows, view.geometry.cols).float().numpy()
            found = localize.grounder.maps_to_grounding(grid, view.geometry)
            rows.write(json.dumps({"id": sample.sample_id, "box_iou": box_iou(found.box, sample.box)}) + "\n")
    return len(source)


def _truncated(vlm, deepest: int):
    """The model with its language model cut after layer ``deepest`` (the floor's forward)."""
    layers = vlm.model.model.language_model.layers
    vlm.model.model.language_model.layers = layers[: deepest + 1]
    return vlm.model


def _bench_floor(vlm, data: Path, work: Path, stages: Stages) -> int:
    import torch

    from localize.data.registry import open_dataset

    source = open_dataset("refcoco", data_root=data, split="val")
    model = _truncated(vlm, max(layer for layer, _ in _heads(vlm)))
    groups: dict[str, list] = {}
    for sample in source:
        groups.setdefault(sample.image_key, []).append(sample)
    for samples in groups.values():
        image = samples[0].load_image()
        batch = vlm.adapter.prepare([image] * len(samples), [s.expression for s in samples])
        with torch.no_grad():
            model.model(**batch.inputs)  # the base model: no LM head, no maps
    return len(source)


def _discovery_samples(data: Path, count: int) -> list:
    from localize.data.registry import open_dataset

    source = open_dataset("refcoco", data_root=data, split="val")
    return [source[i] for i in range(min(count, len(source)))]


def _discover_toolkit(vlm, data: Path, work: Path, stages: Stages, batch_size: int = 8) -> int:
    import localize.heads.discover

    samples = _discovery_samples(data, ARGS.samples)
    sidecar = work / "sidecar.jsonl"
    localize.heads.discover.discover(
        vlm, samples, skip_layers=SKIP_LAYERS, batch_size=batch_size, sidecar=sidecar, progress=False
    )
    return len(samples)


def _discover_one_at_a_time(vlm, data: Path, work: Path, stages: Stages) -> int:
    return _discover_toolkit(vlm, data, work, stages, batch_size=1)


def _discover_eager(vlm, data: Path, work: Path, stages: Stages) -> int:
    import localize.heads.discover
    import torch

    samples = _discovery_samples(data, ARGS.samples)
    vlm.model.set_attn_implementation("eager")
    with (work / "eager.jsonl").open("w") as records:
        for sample in samples:
            batch = vlm.adapter.prepare([sample.load_image()], [sample.expression])
            with torch.no_grad():
                out = vlm.model(**batch.inputs, output_attentions=True)
            query, view = int(batch.last_positions[0]), batch.views[0][0]
            rows = torch.stack([a[0, :, query] for a in out.attentions[SKIP_LAYERS:]]).float()  # [layers, heads, L]
            grid = rows[:, :, view.positions].reshape(-1, view.geometry.rows, view.geometry.cols).numpy()
            entropy = localize.heads.discover.spatial_entropy(grid, connectivity=8, weighting="size")
            mass = rows[:, :, batch.all_image_positions(0)].sum(-1).flatten()
            records.write(
                json.dumps({"id": sample.sample_id, "sum": mass.tolist(), "entropy": entropy.tolist()}) + "\n"
            )
    return len(samples)


def _discover_floor(vlm, data: Path, work: Path, stages: Stages) -> int:
    import torch

    samples = _discovery_samples(data, ARGS.samples)
    for sample in samples:
        batch = vlm.adapter.prepare([sample.load_image()], [sample.expression])
        with torch.no_grad():
            vlm.model.model(**batch.inputs)
    return len(samples)


RUNNERS = {
    "bench": _bench_toolkit, "bench_eager": _bench_eager, "bench_floor": _bench_floor,
    "discover": _discover_toolkit, "discover_b1": _discover_one_at_a_time, "discover_eager": _discover_eager,
    "discover_floor": _discover_floor,
}  # fmt: skip
ARGS = argparse.Namespace(samples=20)
SKIP_LAYERS = 2  # discovery's default: the first two layers are not scored
# Children allocate with glibc's mmap threshold fixed (its default rises after each large free, and freed blocks
# below it stay in the heap), so that every mode's peak RSS is its live memory, as a GPU's max_memory_allocated
# would be, not what the allocator kept: --default-malloc measures with glibc's defaults.
MMAP_THRESHOLD = 1 << 16


def child(mode: str, model_dir: str, data: str, threads: int) -> dict:
    """Run one mode in this process; its seconds after loading, items done, stage seconds and peak RSS."""
    import torch

    import localize

    torch.set_num_threads(threads)
    start = time.perf_counter()
    vlm = localize.load_model(model_dir, device="cpu")
    load_s = time.perf_counter() - start
    stages = Stages()
    _instrument(vlm, stages)
    for tensor in (*vlm.model.parameters(), *vlm.model.buffers()):
        tensor.sum()  # page in the lazily mapped weights, so that "at rest" holds them and the peak is the job's
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the peak above rest is the job's own
    resting = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak RSS
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        items = RUNNERS[mode](vlm, Path(data), Path(work), stages)
        seconds = time.perf_counter() - start
    peak = max(_rss_kib("VmHWM") - resting, 0) / 1024
    return {
        "mode": mode,
        "load_s": load_s,
        "seconds": seconds,
        "items": items,
        "peak_mb": peak,
        "stages": stages.seconds,
    }


def _run_child(mode: str, model_dir: Path, data: Path, args: argparse.Namespace) -> dict:
    argv = [sys.executable, "-m", "localize.benchmarks.job_speed", "--child", mode, "--model-dir", str(model_dir),
            "--data-root", str(data), "--threads", str(args.threads), "--samples", str(args.samples)]  # fmt: skip
    env = dict(os.environ)
    if not args.default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: dict[str, dict]) -> list[str]:
    """The table and the ratios the issue asks for."""
    lines = [
        f"{'mode':<16}{'items':>6}{'seconds':>9}{'items/s':>9}{'peak MB':>9}  stages (share of the work)",
        "(peak MB: the work's peak RSS above the process at rest with the model loaded)",
    ]
    for mode, r in results.items():
        shares = ", ".join(f"{k} {v / r['seconds']:.0%}" for k, v in sorted(r["stages"].items()))
        lines.append(f"{mode:<16}{r['items']:>6}{r['seconds']:>9.2f}{r['items'] / r['seconds']:>9.2f}"
                     f"{r['peak_mb']:>9.0f}  {shares}")  # fmt: skip
    for job, anchor in (("bench", "bench"), ("discover", "discover"), ("discover_b1", "discover")):
        if not all(mode in results for mode in (job, f"{anchor}_eager", f"{anchor}_floor")):
            continue  # --modes left some out
        tool, eager, floor = results[job], results[f"{anchor}_eager"], results[f"{anchor}_floor"]
        lines.append(
            f"{job}: {eager['seconds'] / tool['seconds']:.2f}x the anchor's throughput, peak memory "
            f"{tool['peak_mb'] / eager['peak_mb']:.2f}x the anchor's, time {tool['seconds'] / floor['seconds']:.2f}x "
            f"the floor's"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Build the model and data, run every mode in its own process, print the table and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--per-image", type=int, default=7)
    parser.add_argument("--samples", type=int, default=20, help="discovery samples")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--default-malloc", action="store_true", help="children keep glibc's dynamic mmap threshold")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    ARGS.samples = args.samples
    if args.child:
        print(json.dumps(child(args.child, args.model_dir, args.data_root, args.threads)))
        return 0
    from localize.benchmarks.capture_speed import realistic_llava

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        vlm, _ = realistic_llava(args.layers, args.hidden, args.heads)
        vlm.model.save_pretrained(root / "model")
        vlm.processor.save_pretrained(root / "model")
        data = write_dataset(root / "data", args.images, args.per_image)
        results = {mode: _run_child(mode, root / "model", data, args) for mode in args.modes.split(",")}
    print("\n".join(report(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
