"""Planted-heads discovery benchmark: does discovery find localization heads we put there, and does the official code?

A simulator produces per-sample query-to-image attention maps for ``layers x heads`` heads on a ``grid x grid``
image: a few *planted* localization heads whose map is a blob on the sample's target plus background noise, many
diffuse heads, broad heads (a wide smooth bump: one big above-mean region), sink heads (low ``S_img``, most of it on one or two fixed cells), and decoys -- *roaming* heads (a
compact blob off the target in half the samples) and *sometimes* heads (on the target in a third of the samples).
Mean ``S_img`` per head follows Kang et al.'s Fig. 3 (most heads low, a tail high), with per-sample noise.

The toolkit's real aggregation (:func:`localize.heads.discover._aggregate`: tau on the mean ``S_img`` curve, per-sample
votes for the 10 lowest entropies, frequencies, top-k) runs on the simulated statistics for N = 100, 300, 1000
samples (prefixes of one run per seed), and so does a port of the official ``seilk/LocalizationHeads`` analysis,
bugs included (:func:`official_rank_sample`). ``python -m localize.benchmarks.discovery_sim`` prints both side by side,
plus the measurements that chose the tau method and the tie rule. ``tests/test_discovery_sim.py`` runs a small
instance as the regression guard of every change to discovery.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np
from localize.heads.discover import _aggregate
from localize.heads.scoring import TAU_METHODS, TIE_RULES, attention_sum, max_curvature_threshold, spatial_entropy

DIFFUSE, PLANTED, SINK, ROAMING, SOMETIMES, BROAD = range(6)
OFFICIAL_PER_SAMPLE = 10  # the paper's 10 lowest entropies per sample (the repository has no vote step)


@dataclass(frozen=True)
class SimConfig:
    """Simulator size and population; defaults are the paper's scale (LLaVA-1.5-7B: 32 x 32 heads, 24 x 24)."""

    layers: int = 32
    heads: int = 32
    grid: int = 24
    planted: tuple[tuple[int, int], ...] = ((14, 24), (14, 13), (12, 5))
    roaming: int = 6
    sometimes: int = 6
    sink_fraction: float = 0.15
    broad_fraction: float = 0.15
    skip_layers: int = 2
    chunk: int = 4  # samples per step: small arrays stay in the allocator (big ones page-fault afresh each time)


@dataclass
class Simulation:
    """One seed's per-sample statistics and ground truth (head arrays are flat, layer-major)."""

    config: SimConfig
    kind: np.ndarray  # [heads] DIFFUSE / PLANTED / ...
    true_sum: np.ndarray  # [heads] the mean S_img the simulator draws around
    sums: np.ndarray  # [n, heads]
    entropy: np.ndarray  # [n, heads] the paper's (size-weighted) entropy
    official_entropy: np.ndarray  # [n, heads] the official code's
    area: np.ndarray  # [n, heads] cells above the map's mean

    @property
    def planted_flat(self) -> list[int]:
        """Flat indices of the planted heads."""
        return [layer * self.config.heads + head for layer, head in self.config.planted]


def _heads_setup(cfg: SimConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Kinds, mean S_img and fixed per-head parameters (sink cells and fractions)."""
    n_heads = cfg.layers * cfg.heads
    true_sum = 0.01 + 0.8 * rng.random(n_heads) ** 6  # Fig. 3: most heads low, a tail high
    kind = np.full(n_heads, DIFFUSE)
    planted = [layer * cfg.heads + head for layer, head in cfg.planted]
    kind[planted] = PLANTED
    free = np.setdiff1d(np.arange(cfg.skip_layers * cfg.heads, n_heads), planted)
    picks = rng.permutation(free)
    kind[picks[: cfg.roaming]] = ROAMING
    kind[picks[cfg.roaming : cfg.roaming + cfg.sometimes]] = SOMETIMES
    n_sink = int(cfg.sink_fraction * n_heads)
    first = cfg.roaming + cfg.sometimes
    kind[picks[first : first + n_sink]] = SINK
    kind[picks[first + n_sink : first + n_sink + int(cfg.broad_fraction * n_heads)]] = BROAD
    compact = np.isin(kind, (PLANTED, ROAMING, SOMETIMES))
    true_sum[compact] = rng.uniform(0.3, 0.6, compact.sum())  # localization heads and decoys look at the image
    sink = kind == SINK  # most of their attention is on a text sink (BOS): little on the image
    true_sum[sink] = rng.uniform(0.01, 0.08, sink.sum())
    cells = cfg.grid * cfg.grid
    params = {
        "sink_cells": rng.integers(0, cells, (n_heads, 2)),
        "sink_fraction": rng.uniform(0.3, 0.9, n_heads),
        "sink_second": rng.random(n_heads) < 0.5,  # half the sinks use two cells
        "broad_centre": rng.uniform(0, cfg.grid, (2, n_heads)),
        "broad_sigma": rng.uniform(4.0, 8.0, n_heads),
    }
    return kind, true_sum, params


def _blobs(cy: np.ndarray, cx: np.ndarray, sigma: np.ndarray, grid: int) -> np.ndarray:
    """Unit-mass Gaussian blobs ``[..., grid, grid]`` centred at ``(cy, cx)`` (cells) of width ``sigma``."""
    r = np.arange(grid, dtype=np.float32)
    dy = (r - cy[..., None]) ** 2
    dx = (r - cx[..., None]) ** 2
    g = np.exp(-(dy[..., :, None] + dx[..., None, :]) / (2 * sigma[..., None, None] ** 2))
    return g / g.sum(axis=(-2, -1), keepdims=True)


def _chunk_maps(cfg: SimConfig, kind, true_sum, params, n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, heads, grid, grid]`` float32 attention maps of ``n`` new samples."""
    g, n_heads = cfg.grid, kind.size
    maps = rng.random((n, n_heads, g, g), dtype=np.float32) ** 3  # diffuse background, heavy right tail
    maps /= maps.sum(axis=(-2, -1), keepdims=True)
    flat = maps.reshape(n, n_heads, g * g)
    # sinks: fixed cells hold a fraction of the mass that wobbles per sample
    sinks = np.flatnonzero(kind == SINK)
    f = (params["sink_fraction"][sinks] * rng.uniform(0.8, 1.0, (n, sinks.size))).astype(np.float32)
    flat[:, sinks] *= (1 - f)[..., None]
    second = params["sink_second"][sinks]
    cells = params["sink_cells"][sinks]
    rows = np.arange(n)[:, None]
    flat[rows, sinks, cells[:, 0]] += np.where(second, f / 2, f)
    flat[rows, sinks, cells[:, 1]] += np.where(second, f / 2, 0)
    # compact heads: a blob on the target (planted; sometimes-heads in 35% of samples) or off it (roaming, 50%)
    cy, cx = rng.uniform(3, g - 3, (2, n))
    sigma_t = rng.uniform(1.2, 3.0, n)
    compact = np.flatnonzero(np.isin(kind, (PLANTED, ROAMING, SOMETIMES)))
    k = kind[compact]
    ry, rx = rng.uniform(2, g - 2, (2, n, compact.size))
    far = np.hypot(ry - cy[:, None], rx - cx[:, None]) > 3 * sigma_t[:, None]
    ry, rx = np.where(far, ry, (ry + g / 2) % g), np.where(far, rx, (rx + g / 2) % g)
    on_target = (k == PLANTED)[None, :] | ((k == SOMETIMES)[None, :] & (rng.random((n, k.size)) < 0.35))
    roams = (k == ROAMING)[None, :] & (rng.random((n, k.size)) < 0.5)
    by = np.where(on_target, cy[:, None], ry) + rng.normal(0, 0.5, (n, k.size))
    bx = np.where(on_target, cx[:, None], rx) + rng.normal(0, 0.5, (n, k.size))
    blob = _blobs(by, bx, sigma_t[:, None] * rng.uniform(0.8, 1.2, (n, k.size)), g)
    w = np.clip(rng.normal(0.8, 0.1, (n, k.size)), 0.5, 0.97) * (on_target | roams)
    maps[:, compact] = (w[..., None, None] * blob + (1 - w)[..., None, None] * maps[:, compact]).astype(np.float32)
    # broad heads: a wide smooth bump around a fixed place (one big above-mean region: entropy 0 under size weighting)
    broad = np.flatnonzero(kind == BROAD)
    centre = params["broad_centre"][:, broad][:, None, :] + rng.normal(0, 1.5, (2, n, broad.size))
    bump = _blobs(centre[0], centre[1], np.broadcast_to(params["broad_sigma"][broad], (n, broad.size)), g)
    wb = rng.uniform(0.6, 0.9, (n, broad.size))[..., None, None]
    maps[:, broad] = (wb * bump + (1 - wb) * maps[:, broad]).astype(np.float32)
    s = np.clip(true_sum[None, :] * np.exp(rng.normal(0, 0.3, (n, n_heads))), 1e-4, 0.98).astype(np.float32)
    return maps * s[..., None, None]


def simulate(n_samples: int, seed: int, cfg: SimConfig = SimConfig()) -> Simulation:
    """Per-sample S_img, both entropies and above-mean areas of ``n_samples`` simulated samples."""
    rng = np.random.default_rng(seed)
    kind, true_sum, params = _heads_setup(cfg, rng)
    parts: dict[str, list[np.ndarray]] = {"sums": [], "entropy": [], "official": [], "area": []}
    for start in range(0, n_samples, cfg.chunk):
        maps = _chunk_maps(cfg, kind, true_sum, params, min(cfg.chunk, n_samples - start), rng)
        maps = maps.astype(np.float64)  # once, for every statistic below
        parts["sums"].append(attention_sum(maps))
        parts["entropy"].append(spatial_entropy(maps))
        parts["official"].append(spatial_entropy(maps, weighting="official"))
        parts["area"].append((maps > maps.mean(axis=(-2, -1), keepdims=True)).sum(axis=(-2, -1)))
    cat = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    return Simulation(cfg, kind, true_sum, cat["sums"], cat["entropy"], cat["official"], cat["area"])


# -- the official pipeline, ported (bugs included) ---------------------------------------------------------------
def official_elbow_head_index(sums: np.ndarray) -> int:
    """Port of the official ``find_elbow_point``: chord elbow of the sorted per-sample ``S_img`` in raw
    ``(rank, value)`` coordinates; BUG kept: it returns the *flat head index* of the head at the elbow."""
    order = np.argsort(sums)
    points = np.stack([np.arange(sums.size, dtype=np.float64), sums[order]], axis=1)
    line = points[-1] - points[0]
    unit = line / np.linalg.norm(line)
    rel = points - points[0]
    dist = np.linalg.norm(rel - np.outer(rel @ unit, unit), axis=1)
    return int(order[int(np.argmax(dist))])


def official_rank_sample(sums: np.ndarray, official_entropy: np.ndarray) -> np.ndarray:
    """Port of the official ``analyze_attention_file`` for one sample: flat head indices, best first.

    BUGS kept: heads are eligible when their flat index >= the elbow's head index (not their ``S_img``); ineligible
    heads get entropy inf; all layers take part (the paper drops the first two); the official entropy (0 when
    nothing passes 0.001, the best score); Python's stable sort, so ties go to the lower flat index.
    """
    threshold = official_elbow_head_index(sums)
    scores = np.where(np.arange(sums.size) >= threshold, official_entropy, np.inf)
    return np.argsort(scores, kind="stable")


def official_votes(sums: np.ndarray, official_entropy: np.ndarray, per_sample: int = OFFICIAL_PER_SAMPLE):
    """Votes of the official ranking's first ``per_sample`` heads per sample (the paper's frequency, sec. 4.2)."""
    votes = np.zeros(sums.shape[1], dtype=np.int64)
    eligible = 0
    for s, e in zip(sums, official_entropy):
        votes[official_rank_sample(s, e)[:per_sample]] += 1
        eligible += sums.shape[1] - official_elbow_head_index(s)
    return votes, eligible / max(len(sums), 1)


# -- the toolkit's aggregation on the simulation -----------------------------------------------------------------
def toolkit_result(sim: Simulation, n: int, tau_method: str = "chord", tie="mean-entropy", per_sample: int = 10):
    """The real :func:`localize.heads.discover._aggregate` on the first ``n`` samples (layers >= ``skip_layers``)."""
    cfg = sim.config
    skip = cfg.skip_layers * cfg.heads
    header = {"num_layers": cfg.layers, "num_heads": cfg.heads, "skip_layers": cfg.skip_layers}
    header |= {"model": "simulator", "revision": None, "model_type": "sim", "template": None, "dtype": "float32"}
    header |= {"weighting": "size", "connectivity": 8}
    samples = [SimpleNamespace(sample_id=str(i)) for i in range(n)]
    records = {
        str(i): {
            "id": str(i),
            "grid": [cfg.grid, cfg.grid],
            "sum": sim.sums[i, skip:],
            "entropy": sim.entropy[i, skip:],
        }
        for i in range(n)
    }
    if not isinstance(tie, str):
        tie = tie[:n, skip:]
    return _aggregate(
        header,
        samples,
        records,
        [],
        top_k=len(cfg.planted),
        per_sample=per_sample,
        tau=None,
        tau_method=tau_method,
        criterion="both",
        mode="fixed",
        tie=tie,
        seed=None,
        settings={},
    )


def _ranks(order: list[int], targets: list[int]) -> list[int | None]:
    position = {head: rank for rank, head in enumerate(order, start=1)}
    return [position.get(t) for t in targets]


def _frequency_order(votes: np.ndarray) -> list[int]:
    """Flat heads by votes (desc), then index; heads with no vote left out."""
    order = np.lexsort((np.arange(votes.size), -votes))
    return [int(i) for i in order if votes[i] > 0]


def true_eligible(sim: Simulation) -> np.ndarray:
    """Scored heads whose true mean S_img reaches the global bend (chord) of the true, noiseless curve."""
    skip = sim.config.skip_layers * sim.config.heads
    truth = sim.true_sum.copy()
    truth[:skip] = np.nan
    bend = max_curvature_threshold(truth[skip:], "chord")
    return np.flatnonzero(truth >= bend)


def evaluate(sim: Simulation, n: int, tau_method: str = "chord", tie="mean-entropy") -> dict:
    """Toolkit and official figures on the first ``n`` samples: recovery, planted ranks, heads passing tau."""
    cfg, planted, k = sim.config, sim.planted_flat, len(sim.config.planted)
    result = toolkit_result(sim, n, tau_method, tie)
    counts = result.counts.ravel()
    order = _frequency_order(counts)
    chosen = [layer * cfg.heads + head for layer, head in result.heads]
    truth = true_eligible(sim)
    mean_sum = sim.sums[:n].mean(axis=0)
    passing = np.flatnonzero(mean_sum >= result.heads_file.tau)
    passing = passing[passing >= cfg.skip_layers * cfg.heads]
    others = np.setdiff1d(np.arange(counts.size), planted)
    margin = (counts[planted].min() - counts[others].max()) / n  # > 0: every planted head beats every other head
    votes, official_eligible = official_votes(sim.sums[:n], sim.official_entropy[:n])
    official_order = _frequency_order(votes)
    return {
        "ours_recovered": set(chosen) == set(planted),
        "ours_ranks": _ranks(order, planted),
        "margin": float(margin),
        "ours_pass": int(passing.size),
        "true_eligible": int(truth.size),
        "true_passing": float(np.isin(truth, passing).mean()),
        "tau": result.heads_file.tau,
        "official_recovered": set(official_order[:k]) == set(planted),
        "official_ranks": _ranks(official_order, planted),
        "official_pass": official_eligible,
    }


def _fmt_ranks(ranks_per_seed: list[list[int | None]]) -> str:
    """Median rank of each planted head over the seeds ('-' = never voted for in more than half)."""
    out = []
    for column in zip(*ranks_per_seed):
        values = sorted(r if r is not None else 10**6 for r in column)
        median = values[len(values) // 2]
        out.append("-" if median >= 10**6 else str(median))
    return "/".join(out)


def report(rows: dict[int, list[dict]]) -> str:
    """Markdown table: toolkit vs official per N over the seeds."""
    lines = [
        "| N | ours: all planted in top-k | ours: planted ranks (median) | ours: heads passing tau | true eligible "
        "| true eligible passing (mean / min) | official: all planted in top-k | official: planted ranks (median) "
        "| official: heads eligible per sample |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, runs in rows.items():
        seeds = len(runs)
        frac = [r["true_passing"] for r in runs]
        lines.append(
            f"| {n} | {sum(r['ours_recovered'] for r in runs)}/{seeds} | {_fmt_ranks([r['ours_ranks'] for r in runs])} "
            f"| {np.mean([r['ours_pass'] for r in runs]):.0f} | {np.mean([r['true_eligible'] for r in runs]):.0f} "
            f"| {np.mean(frac):.0%} / {min(frac):.0%} | {sum(r['official_recovered'] for r in runs)}/{seeds} "
            f"| {_fmt_ranks([r['official_ranks'] for r in runs])} | {np.mean([r['official_pass'] for r in runs]):.0f} |"
        )
    return "\n".join(lines)


def compare_choices(sims: list[Simulation], sizes: list[int]) -> str:
    """Recovery and tau figures of every tau method (tie fixed) and tie rule (tau fixed) on the same simulations."""
    n = sizes[-1]
    lines = [
        f"tau methods (tie mean-entropy), N = {n}:",
        "| method | all planted in top-k | |tau - bend| (mean) | heads passing | true eligible passing (min) |",
        "|---|---|---|---|---|",
    ]
    for method in TAU_METHODS:
        runs = [(evaluate(sim, n, method), sim) for sim in sims]
        bends = [max_curvature_threshold(sim.true_sum[sim.config.skip_layers * sim.config.heads :]) for sim in sims]
        err = np.mean([abs(r["tau"] - b) for (r, _), b in zip(runs, bends)])
        lines.append(
            f"| {method} | {sum(r['ours_recovered'] for r, _ in runs)}/{len(sims)} | {err:.3f} "
            f"| {np.mean([r['ours_pass'] for r, _ in runs]):.0f} | {min(r['true_passing'] for r, _ in runs):.0%} |"
        )
    lines += [
        "",
        "tie rules (tau chord):",
        "| tie | N | all planted in top-k | planted ranks (median) "
        "| vote margin: weakest planted - best other (mean / min, % of N) |",
        "|---|---|---|---|---|",
    ]
    ties: dict[str, object] = {rule: rule for rule in TIE_RULES}
    ties |= {"smaller-area": 1, "larger-area": -1}  # keys: the above-mean area (cells), lower first
    for name, tie in ties.items():
        for size in sizes:
            runs = [evaluate(sim, size, "chord", tie if isinstance(tie, str) else tie * sim.area) for sim in sims]
            margins = [100 * r["margin"] for r in runs]
            lines.append(
                f"| {name} | {size} | {sum(r['ours_recovered'] for r in runs)}/{len(sims)} "
                f"| {_fmt_ranks([r['ours_ranks'] for r in runs])} | {np.mean(margins):+.1f} / {min(margins):+.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m localize.benchmarks.discovery_sim``: the planted-heads table (toolkit vs official) and the choices."""
    parser = argparse.ArgumentParser(
        prog="python -m localize.benchmarks.discovery_sim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=10, help="simulator seeds (default 10)")
    parser.add_argument(
        "--samples", default="100,300,1000", help="N values, prefixes of one run (default 100,300,1000)"
    )
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--grid", type=int, default=24)
    parser.add_argument("--no-choices", action="store_true", help="skip the tau-method / tie-rule comparison")
    args = parser.parse_args(argv)
    sizes = sorted(int(v) for v in args.samples.split(","))
    cfg = replace(SimConfig(), layers=args.layers, heads=args.heads, grid=args.grid)
    start = time.perf_counter()
    sims = [simulate(sizes[-1], seed, cfg) for seed in range(args.seeds)]
    simulated = time.perf_counter() - start
    rows = {n: [evaluate(sim, n) for sim in sims] for n in sizes}
    print(
        f"planted heads {', '.join(f'L{a} H{b}' for a, b in cfg.planted)}; {cfg.layers} x {cfg.heads} heads, "
        f"{cfg.grid} x {cfg.grid} grid, {args.seeds} seeds; top-k = {len(cfg.planted)}"
    )
    print(report(rows))
    if not args.no_choices:
        print()
        print(compare_choices(sims, sizes))
    print(f"\nsimulation {simulated:.0f} s, total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
