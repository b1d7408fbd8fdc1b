"""The speed benchmarks run (tiny settings): they print the ratios the README quotes, so they must not rot."""

from __future__ import annotations

import pytest


def test_gpu_bench_dry_run_prints_every_mode_and_the_projections(capsys):
    from localize.benchmarks.gpu_bench import main

    assert main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for mode in ("eager", "all heads", "3 heads + early exit", "7 phrases, prefix reuse"):
        assert f"\n{mode} " in out
    assert "RefCOCO val (10834 expressions)" in out and "discovery on 1000 samples" in out


@pytest.mark.slow
def test_job_speed_runs_every_mode_and_prints_the_ratios(capsys):
    from localize.benchmarks.job_speed import main

    argv = ["--images", "2", "--per-image", "2", "--samples", "2", "--layers", "3", "--hidden", "64", "--heads", "2"]
    assert main([*argv, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for mode in ("bench", "bench_eager", "bench_floor", "discover", "discover_b1", "discover_eager", "discover_floor"):
        assert f"\n{mode} " in out
    assert "bench: " in out and "x the anchor's throughput" in out and "discover: " in out


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["data", "--help"]])
def test_commands_that_need_no_model_import_no_torch(argv):
    """``localize --version`` / ``--help`` stay instant: neither torch nor transformers is imported."""
    import subprocess
    import sys

    code = (
        f"import sys\nfrom localize.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
