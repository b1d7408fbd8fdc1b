"""Capture speed and peak memory against the eager ``output_attentions=True`` anchor, side by side in one run.

    python -m localize.benchmarks.capture_speed [--layers 8 --hidden 512 --threads 1 --repeats 5]

A random-weight LLaVA of realistic shape for a CPU (default: 8 decoder layers, hidden 512, 8 heads, 24x24 = 576
image tokens). Each mode runs in its own subprocess so its peak memory is its own: the process's peak RSS
(VmHWM) is reset after the model is built and warmed up, and the peak above the resting RSS is reported.
Times are medians over ``--repeats`` runs, on ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import statistics
import subprocess
import sys
import time

PHRASES = [
    "the red circle",
    "the big man on the left of the dog",
    "a small blue car next to the tree",
    "the woman in the middle",
    "the leftmost black cat on top of the car",
]
MODES = {
    "eager_all": "eager output_attentions, 2 phrases (anchor)",
    "capture_all": "capture all heads, 2 phrases",
    "capture_mid3": "capture 3 mid-depth heads + early exit, 2 phrases",
    "sdpa_truncated": "plain SDPA forward truncated at the same layer, 2 phrases (floor)",
    "eager_5": "5 eager forwards, 1 phrase each (anchor)",
    "capture_5_separate": "5 capture calls, 3 mid heads + early exit, no prefix reuse",
    "capture_5_prefix": "5 phrases on one image: prefix reuse + early exit, 3 mid heads",
}


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def realistic_llava(layers: int = 8, hidden: int = 512, heads: int = 8):
    """A random-weight LLaVA of realistic shape for a CPU (24x24 = 576 image tokens) and a 640x480 test image."""
    import numpy as np
    from PIL import Image

    from localize.models import VLM
    from localize.testing import tiny_llava

    model, processor = tiny_llava(
        image_size=336,
        patch_size=14,
        vision_hidden=64,
        vision_layers=2,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        intermediate=hidden * 11 // 4,
    )
    image = Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8))
    return VLM(model, processor), image


def _worker(mode: str, args: argparse.Namespace) -> dict:
    import gc

    import torch

    from localize.capture import CAPTURE_ATTENTION, eager_reference_maps

    torch.set_num_threads(args.threads)
    vlm, image = realistic_llava(args.layers, args.hidden, args.heads)
    model = vlm.model
    # Mid-depth at LLaVA-1.5-7B's published heads' relative depth (L14 of 32 layers): L3 of 8.
    mid = args.layers * 14 // 32
    mid_heads = [(mid, 1), (mid, 2), (mid, 5 % args.heads)]
    two = PHRASES[:2]
    batch2 = vlm.adapter.prepare([image] * 2, two)
    singles = [vlm.adapter.prepare([image], [p]) for p in PHRASES]
    text_config = model.config.text_config

    def sdpa_truncated() -> None:
        vlm.adapter.set_attention("sdpa")
        layers = text_config.num_hidden_layers
        text_config.num_hidden_layers = mid + 1
        try:
            with torch.no_grad():
                model(**batch2.inputs, use_cache=False, logits_to_keep=1)
        finally:
            text_config.num_hidden_layers = layers
            vlm.adapter.set_attention(CAPTURE_ATTENTION)

    runs = {
        "eager_all": lambda: eager_reference_maps(model, vlm.adapter, batch2),
        "capture_all": lambda: vlm.capture(image, two, reuse_prefix=False),
        "capture_mid3": lambda: vlm.capture(image, two, mid_heads, reuse_prefix=False),
        "sdpa_truncated": sdpa_truncated,
        "eager_5": lambda: [eager_reference_maps(model, vlm.adapter, b) for b in singles],
        "capture_5_separate": lambda: [vlm.capture(image, [p], mid_heads) for p in PHRASES],
        "capture_5_prefix": lambda: vlm.capture(image, PHRASES, mid_heads),
    }
    run = runs[mode]
    run()  # warm-up
    # Peak: one run after handing freed heap back to the OS (else glibc's cached arenas hide allocations).
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    resting = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak RSS
    run()
    peak = _rss_kib("VmHWM")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"mode": mode, "seconds": statistics.median(times), "peak_mib": max(peak - resting, 0) / 1024}


def add_model_arguments(parser: argparse.ArgumentParser, repeats: int) -> None:
    """The benchmark model's shape, threads and repeats (shared by the speed benchmarks)."""
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=repeats)


def main(argv: list[str] | None = None) -> int:
    """Run every mode in its own subprocess and print times, peaks and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, repeats=5)
    parser.add_argument("--worker", choices=sorted(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args)))
        return 0
    common = [
        "--layers",
        str(args.layers),
        "--hidden",
        str(args.hidden),
        "--heads",
        str(args.heads),
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
    ]
    results = {}
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, "-m", "localize.benchmarks.capture_speed", "--worker", mode, *common],
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{MODES[mode]:<66} {results[mode]['seconds'] * 1000:9.1f} ms  peak +{results[mode]['peak_mib']:7.1f} MiB",
            flush=True,
        )

    def ratio(a: str, b: str, key: str) -> float:
        return results[a][key] / max(results[b][key], 1e-9)

    print(
        f"\nmodel: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, 576 image tokens; "
        f"{args.threads} thread(s), median of {args.repeats}"
    )
    summary = {
        "all heads: time vs eager": ratio("capture_all", "eager_all", "seconds"),
        "all heads: peak memory vs eager": ratio("capture_all", "eager_all", "peak_mib"),
        "3 mid heads + early exit: time vs eager": ratio("capture_mid3", "eager_all", "seconds"),
        "3 mid heads + early exit: peak memory vs eager": ratio("capture_mid3", "eager_all", "peak_mib"),
        "3 mid heads + early exit: time vs truncated SDPA floor": ratio("capture_mid3", "sdpa_truncated", "seconds"),
        "5 phrases, prefix reuse + early exit: time vs 5 eager": ratio("capture_5_prefix", "eager_5", "seconds"),
        "5 phrases, prefix reuse + early exit: time vs 5 separate captures": ratio(
            "capture_5_prefix", "capture_5_separate", "seconds"
        ),
        "5 phrases, prefix reuse + early exit: peak memory vs 5 eager": ratio(
            "capture_5_prefix", "eager_5", "peak_mib"
        ),
    }
    for name, value in summary.items():
        print(f"{name:<66} {value:6.3f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results, "ratios": summary}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
