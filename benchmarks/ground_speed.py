"""``ground_many`` (5 phrases, one image prefix) vs 5 ``ground`` calls vs the eager anchor, side by side.

    python -m localize.benchmarks.ground_speed [--layers 8 --hidden 512 --threads 1 --repeats 3]

Same random-weight LLaVA as ``localize.benchmarks.capture_speed`` (576 image tokens). The eager anchor runs each phrase with
``output_attentions=True`` and the same maps -> box/mask step, so every column does the same work per phrase.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from localize.benchmarks.capture_speed import PHRASES, add_model_arguments, realistic_llava


def main(argv: list[str] | None = None) -> int:
    """Time the three ways of grounding 5 phrases on one image and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, repeats=3)
    args = parser.parse_args(argv)

    import torch

    from localize.capture import eager_reference_maps
    from localize.grounder import Localizer
    from localize.postprocess import maps_to_grounding

    torch.set_num_threads(args.threads)
    vlm, image = realistic_llava(args.layers, args.hidden, args.heads)
    mid = args.layers * 14 // 32  # LLaVA-1.5-7B's published heads sit at L14 of 32
    heads = [(mid, 1), (mid, 2), (mid, 5 % args.heads)]
    localizer = Localizer(vlm, heads)

    def eager() -> None:
        for phrase in PHRASES:
            batch = vlm.adapter.prepare([image], [phrase])
            dense = eager_reference_maps(vlm.model, vlm.adapter, batch)[0]
            maps = torch.stack([dense[layer, head] for layer, head in heads]).numpy()
            maps_to_grounding(maps, batch.geometries[0], localizer.settings)

    runs = {
        "eager anchor: 5 x (output_attentions forward + box/mask)": eager,
        "5 separate ground() calls": lambda: [localizer.ground(image, p) for p in PHRASES],
        "ground_many(5 phrases): one image prefix": lambda: localizer.ground_many(image, PHRASES),
    }
    times = {}
    for name, run in runs.items():
        run()  # warm-up
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
        times[name] = statistics.median(samples)
        print(f"{name:<58} {times[name] * 1000:9.1f} ms", flush=True)
    many, separate, anchor = (times[k] for k in list(runs)[::-1])
    print(
        f"\nmodel: {args.layers} layers, hidden {args.hidden}, 576 image tokens; heads {heads}; "
        f"{args.threads} thread(s), median of {args.repeats}"
    )
    print(f"{'ground_many vs 5 separate ground calls':<58} {many / separate:6.3f}x")
    print(f"{'ground_many vs eager anchor':<58} {many / anchor:6.3f}x")
    print(f"{'5 separate ground calls vs eager anchor':<58} {separate / anchor:6.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
