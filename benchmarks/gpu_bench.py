"""Capture on a GPU at the real scale: a random-weight model of LLaVA-1.5-7B's exact shape, bf16.

    python -m localize.benchmarks.gpu_bench [--quick] [--dry-run]

Builds the model directly on the GPU from ``llava-hf/llava-1.5-7b-hf``'s config (CLIP ViT-L/14 at 336 px: 24
layers x 1024, MLP 4096; a Vicuna-7B LM: 32 layers x 4096, 32 heads, MLP 11008, vocabulary 32064; 576 image
tokens; the projector reads CLIP's second-last layer) with a word-level tokenizer, and measures per expression
the prefill time (CUDA-synced median) and the peak GPU memory above the loaded model for:

- ``eager``: one ``output_attentions=True`` forward per expression (the anchor);
- ``all heads``: capture of every head of every layer;
- ``3 heads + early exit``: 3 heads at L14 (LLaVA-1.5-7B's published heads' depth), stopping there;
- ``7 phrases, prefix reuse``: the image prefix once, 7 phrases in one batched pass, 3 heads + early exit;

and projects RefCOCO val (10,834 expressions over 1,500 images, ~7 per image) and discovery on 1000 samples
(all heads, one expression each). ``--quick`` takes fewer repeats; ``--dry-run`` runs the same code on the CPU
with a tiny model of the same family (the test suite does, so the script cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

PHRASES = [
    "the man on the left", "a red car next to the tree", "the small dog", "the woman in the middle",
    "the leftmost black cat on top of the car", "the big truck", "the person holding an umbrella",
]  # fmt: skip
REFCOCO_VAL = (10_834, 1_500)  # expressions, images
DISCOVERY_SAMPLES = 1000


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(dry_run: bool):
    """A VLM handle on a random-weight model of LLaVA-1.5-7B's exact shape on the GPU in bf16 (a dry run: the
    tiny test LLaVA on the CPU)."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from localize.models import VLM
    from localize.testing import tiny_llava

    if dry_run:
        return VLM(*tiny_llava())
    _, processor = tiny_llava(image_size=336, patch_size=14)  # its processor: CLIP at 336 px, 14-px patches
    config = LlavaConfig(
        text_config={"model_type": "llama", "vocab_size": 32064, "max_position_embeddings": 4096},
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
    )
    with torch.device("cuda"), _default_dtype(torch.bfloat16):
        model = LlavaForConditionalGeneration(config)
    return VLM(model.eval(), processor)


def _timed(run, device: str, repeats: int) -> tuple[float, float]:
    """(median seconds, peak memory in MiB above what was allocated before) of ``run``."""
    import torch

    run()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if device == "cuda" else float("nan")
    return statistics.median(times), peak


def measure(vlm, device: str, repeats: int) -> dict[str, tuple[float, float, int]]:
    """Each mode's (seconds per call, peak MiB, expressions per call); every call preprocesses its own inputs."""
    import numpy as np
    import torch
    from PIL import Image

    from localize.capture import register_capture_attention

    image = Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8))
    mid = vlm.num_layers * 14 // 32
    heads = [(mid, 1), (mid, 2), (mid, 5 % vlm.num_heads)]

    def eager() -> list:  # the anchor: all L x L maps returned, the query rows taken from them
        batch = vlm.adapter.prepare([image], PHRASES[:1])
        out = vlm.model(**{k: v.to(device) for k, v in batch.inputs.items()}, output_attentions=True, use_cache=False)
        query = int(batch.last_positions[0])
        return [a[0, :, query, batch.image_positions[0].to(device)].float() for a in out.attentions]

    results = {}
    with torch.no_grad():
        vlm.adapter.set_attention("eager")
        try:
            results["eager"] = (*_timed(eager, device, repeats), 1)
        finally:
            vlm.adapter.set_attention(register_capture_attention())
        modes = {
            "all heads": (lambda: vlm.capture(image, PHRASES[:1], reuse_prefix=False), 1),
            "3 heads + early exit": (lambda: vlm.capture(image, PHRASES[:1], heads, reuse_prefix=False), 1),
            "7 phrases, prefix reuse": (lambda: vlm.capture(image, PHRASES, heads), len(PHRASES)),
        }
        results |= {name: (*_timed(run, device, repeats), n) for name, (run, n) in modes.items()}
    return results


def report(results: dict[str, tuple[float, float, int]], title: str) -> list[str]:
    """The table (ms per expression, peak memory) and the projected job times."""
    lines = [title, f"{'mode':<26}{'ms / expression':>16}{'peak MiB':>10}"]
    per_expression = {name: seconds / n for name, (seconds, _, n) in results.items()}
    for name, (seconds, peak, n) in results.items():
        lines.append(f"{name:<26}{1000 * seconds / n:>16.1f}{peak:>10.0f}")
    expressions, _ = REFCOCO_VAL
    bench = expressions * per_expression["7 phrases, prefix reuse"]
    bench_eager = expressions * per_expression["eager"]
    lines.append(f"RefCOCO val ({expressions} expressions): {bench / 60:.1f} min with prefix reuse, "
                 f"{bench_eager / 60:.1f} min eager ({bench_eager / bench:.1f}x)")  # fmt: skip
    discovery, discovery_eager = (DISCOVERY_SAMPLES * per_expression[m] for m in ("all heads", "eager"))
    lines.append(f"discovery on {DISCOVERY_SAMPLES} samples, all heads: {discovery / 60:.1f} min, "
                 f"{discovery_eager / 60:.1f} min eager ({discovery_eager / discovery:.1f}x)")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    """Build, measure and print."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 10")
    parser.add_argument("--dry-run", action="store_true", help="a tiny model on the CPU (no GPU needed)")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no GPU here; --dry-run runs the same code on the CPU with a tiny model")
    device = "cpu" if args.dry_run else "cuda"
    vlm = build(args.dry_run)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run, tiny model)"
    results = measure(vlm, device, 1 if args.dry_run else 3 if args.quick else 10)
    print("\n".join(report(results, f"LLaVA-1.5-7B shape ({vlm.num_layers} layers), random weights, on {name}")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
