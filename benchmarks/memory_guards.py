"""The two runaway-memory cases of bad input, each measured in its own process: seconds and peak RSS.

    python -m localize.benchmarks.memory_guards [--side 12000] [--work DIR]

1. A model folder whose ``config.json`` says only ``{"model_type": "llava"}`` beside a tiny model's weights:
   transformers alone would build a default-size 7B LLaVA (~25 GB) first; ``load_model`` must refuse it.
2. A ``side`` x ``side`` PNG grounded by ``localize ground`` with the embedded model: reduced on load, so the
   processor and the maps never see the full size.

Targets (issue 24): case 1 refused in < 5 s with < 1 GB peak; case 2 grounded with < 1 GB peak. Peak RSS is each
child's own ``ru_maxrss`` and includes the interpreter, torch and the model (printed as the baseline: a process
that only imports localize and loads the embedded model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = "import localize; localize.load('shapes-tiny', device='cpu')"
REFUSE = """
import time
import localize
start = time.perf_counter()
try:
    localize.load_model({folder!r}, device='cpu')
except localize.LocalizeError as err:
    print(f'{{time.perf_counter() - start:.2f}}', err)
else:
    raise SystemExit('loaded: the guard did not refuse')
"""
GROUND = "from localize.cli import main; raise SystemExit(main(['ground', {image!r}, 'the red circle', '--device', "
GROUND += "'cpu', '--out', {out!r}]))"


# The child reports its own peak at exit (RUSAGE_CHILDREN would give the largest child so far).
PEAK = "import atexit, resource\natexit.register(lambda: print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"


def _measure(code: str) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of ``python -c code`` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK + code], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}): {done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    peak_mb = int(lines[-1].split()[1]) / 1024
    return seconds, peak_mb, "\n".join(lines[:-1])


def _mismatched_folder(work: Path) -> Path:
    """A tiny LLaVA saved with a config.json that lost its sizes."""
    from localize.testing import tiny_llava

    folder = work / "default-size-config"
    model, processor = tiny_llava()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    return folder


def _large_image(work: Path, side: int, suffix: str) -> Path:
    """A ``side``-pixel square PNG / JPEG of a flat scene (a red circle, a blue square), written in a child."""
    path = work / f"large-{side}{suffix}"
    code = (
        "from PIL import Image, ImageDraw; im = Image.new('RGB', ({s}, {s}), (30, 30, 30)); d = ImageDraw.Draw(im); "
        "d.ellipse(({a}, {a}, {b}, {b}), fill=(220, 40, 40)); d.rectangle(({c}, {a}, {e}, {b}), fill=(40, 60, 220)); "
        "im.save({p!r})"
    ).format(s=side, a=side // 10, b=side * 4 // 10, c=side * 55 // 100, e=side * 85 // 100, p=str(path))
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """Measure both cases and the baseline; print them against the targets."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=12000, help="side of the large PNG (default 12000)")
    parser.add_argument("--work", help="folder for the inputs (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        baseline = _measure(BASELINE)
        refused = _measure(REFUSE.format(folder=str(_mismatched_folder(work))))
        grounded = {}
        for suffix in (".png", ".jpg"):
            image = _large_image(work, args.side, suffix)
            seconds, peak, _ = _measure(GROUND.format(image=str(image), out=str(work / "ground.json")))
            result = json.loads((work / "ground.json").read_text())
            grounded[suffix] = (seconds, peak, image.stat().st_size / 1e3, result)
    print(f"baseline (import + load shapes-tiny): {baseline[0]:.1f} s, peak {baseline[1]:.0f} MB")
    refusal_s, message = refused[2].split(" ", 1)
    print(
        f"mismatched config refused: load_model raised after {refusal_s} s ({refused[0]:.1f} s with the interpreter "
        f"and imports), peak {refused[1]:.0f} MB (target < 5 s, < 1024 MB)"
    )
    print(f"  {message[:200]}")
    for suffix, (seconds, peak, kb, result) in grounded.items():
        print(
            f"{args.side}x{args.side} {suffix[1:].upper()} ({kb:.0f} kB) grounded: {seconds:.1f} s, peak {peak:.0f} MB, "
            f"{peak - baseline[1]:+.0f} MB over the baseline (target < 1024 MB); box {result['results'][0]['box']}"
        )
    ok = float(refused[2].split()[0]) < 5 and refused[1] < 1024 and all(g[1] < 1024 for g in grounded.values())
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
