"""Command-line options every grounding command shares (``localize ground``, ``demo`` and ``bench``): SAM, the
maps -> box smoothing and mask mode, device and dtype, and the :class:`~localize.grounder.Localizer` they describe."""

from __future__ import annotations

import argparse
from typing import Any

PROMPTS = ("box", "point", "points", "box+points")
SAM_TYPES = ("vit_b", "vit_l", "vit_h")


def add_grounding_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sam --sam-type --prompt --kernel --sigma --scale-smoothing --mask-mode --view --device --dtype``."""
    parser.add_argument("--sam", default=None, help="SAM checkpoint (.pth): masks from SAM")
    parser.add_argument("--sam-type", default="vit_h", choices=SAM_TYPES)
    parser.add_argument("--prompt", default="box", choices=PROMPTS, help="SAM prompt (default box)")
    parser.add_argument("--kernel", type=int, default=7, help="Gaussian kernel on the grid (paper: 7 for 24x24)")
    parser.add_argument("--sigma", type=float, default=1.0, help="Gaussian sigma on the grid (paper: 1; 0 = off)")
    parser.add_argument(
        "--scale-smoothing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scale kernel and sigma with the model's grid relative to 24x24 (default; unchanged on LLaVA-1.5)",
    )
    parser.add_argument("--mask-mode", default="hull", choices=["hull", "component", "binary"])
    parser.add_argument(
        "--view",
        default="default",
        help="tiled families: the view that grounds (default: the finest covering the image; a view's name, as "
        "`localize models` lists them; or fuse = every view's map averaged in image pixels)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")


def settings_from_args(args: Any) -> Any:
    """The :class:`~localize.postprocess.GroundingSettings` of parsed grounding arguments (or a config object)."""
    from .postprocess import GroundingSettings

    return GroundingSettings(
        kernel=args.kernel,
        sigma=args.sigma,
        scale_to_grid=args.scale_smoothing,
        mask_mode=args.mask_mode,
        view=getattr(args, "view", "default"),
    )


def localizer_from_args(args: Any, model: Any = None, heads: Any = None) -> Any:
    """A :class:`~localize.grounder.Localizer` from parsed arguments (``model`` / ``heads`` override theirs)."""
    from .grounder import load

    return load(
        model if model is not None else args.model,
        heads if heads is not None else args.heads,
        sam=args.sam,
        sam_type=args.sam_type,
        sam_prompt=args.prompt,
        settings=settings_from_args(args),
        device=args.device,
        dtype=args.dtype,
    )
