"""Loading a vision-language model into a :class:`VLM` handle (model + processor + the family's adapter)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .adapters import Adapter, adapter_for
from .capture import AttentionMaps, Capturer, Head
from .errors import InputError, UnknownModelError
from .images import ImageLike, load_image
from .weights import check_weights_fit

# Short names -> hub ids. A local directory or any hub id works too.
ALIASES: dict[str, str] = {
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    "llava-v1.6-mistral-7b": "llava-hf/llava-v1.6-mistral-7b-hf",
    "llava-v1.6-vicuna-7b": "llava-hf/llava-v1.6-vicuna-7b-hf",
    "llava-v1.6-34b": "llava-hf/llava-v1.6-34b-hf",
    "llava-onevision-0.5b": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    "llava-onevision-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "internvl3-1b": "OpenGVLab/InternVL3-1B-hf",
    "internvl3-2b": "OpenGVLab/InternVL3-2B-hf",
    "internvl3-8b": "OpenGVLab/InternVL3-8B-hf",
    "internvl2.5-8b": "OpenGVLab/InternVL2_5-8B-MPO-hf",
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
    "smolvlm2-2.2b": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
    "idefics3-8b": "HuggingFaceM4/Idefics3-8B-Llama3",
    "molmo2-4b": "allenai/Molmo2-4B",
    "molmo2-8b": "allenai/Molmo2-8B",
    "aya-vision-8b": "CohereForAI/aya-vision-8b",
    "aya-vision-32b": "CohereForAI/aya-vision-32b",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
    "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Instruct",
    "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct",
    "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct",
    "qwen3-vl-30b-a3b": "Qwen/Qwen3-VL-30B-A3B-Instruct",
    "glm-4.1v-9b": "zai-org/GLM-4.1V-9B-Thinking",
    "deepseek-vl-1.3b": "deepseek-community/deepseek-vl-1.3b-chat",
    "deepseek-vl-7b": "deepseek-community/deepseek-vl-7b-chat",
    "mistral-small-3.1-24b": "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
    "paligemma-3b-224": "google/paligemma-3b-mix-224",
    "paligemma2-3b-224": "google/paligemma2-3b-mix-224",
    "gemma-3-4b": "google/gemma-3-4b-it",
    "gemma-3-12b": "google/gemma-3-12b-it",
    "gemma-3-27b": "google/gemma-3-27b-it",
}

ASSETS = Path(__file__).resolve().parent / "assets"
# The shapes-world models (README, "The shapes world"; benchmarks/shapes_tiny/TRIALS.md): shapes-tiny, the grounding
# default (attention-supervised in training, heads found blind); shapes-tiny-base (answers only) and
# shapes-tiny-wtl (that base after Where-to-Look KL fine-tuning of its discovered heads).
EMBEDDED: dict[str, Path] = {name: ASSETS / name for name in ("shapes-tiny", "shapes-tiny-base", "shapes-tiny-wtl")}


def known_aliases() -> dict[str, str]:
    """Every alias and what it resolves to (embedded models only when shipped)."""
    out = dict(ALIASES)
    out.update({name: str(path) for name, path in EMBEDDED.items() if path.is_dir()})
    return out


def resolve_spec(spec: str) -> str:
    """An alias, a local directory or a hub id -> a local directory or hub id; UnknownModelError with near names."""
    if spec in EMBEDDED:
        if not EMBEDDED[spec].is_dir():
            raise UnknownModelError(f"embedded model {spec!r} is not shipped in this install ({EMBEDDED[spec]})")
        return str(EMBEDDED[spec])
    if spec in ALIASES:
        return ALIASES[spec]
    if os.path.isdir(spec):
        merged = os.path.join(spec, "merged")  # a `localize finetune --out` directory: its exported model
        if not os.path.isfile(os.path.join(spec, "config.json")) and os.path.isfile(
            os.path.join(merged, "config.json")
        ):
            return merged
        return spec
    if "/" in spec and not spec.startswith((".", "/")) and spec.count("/") == 1:
        return spec  # a hub id
    near = difflib.get_close_matches(spec, list(known_aliases()), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise UnknownModelError(
        f"unknown model {spec!r}: not an alias, a local directory or a hub id (owner/name).{hint} "
        f"Aliases: {', '.join(sorted(known_aliases()))}."
    )


def _resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if present, else cpu; a device that is not on this machine is an :class:`InputError`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if target.type == "cuda":
        count = torch.cuda.device_count()
        if target.index is not None and target.index >= count or count == 0:
            raise InputError(f"--device {device}: CUDA has {count} GPU(s) on this machine; use --device cpu or auto")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: MPS is not available on this machine; use --device cpu or auto")
    return target


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise InputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return names[dtype]


class VLM:
    """A loaded vision-language model: ``model``, ``processor``, the family ``adapter`` and the capture path."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        spec: str = "<in-memory>",
        template: str | None = None,
        revision: str | None = None,
        source: str | None = None,
    ) -> None:
        model_type = model.config.model_type
        self.model = model
        self.processor = processor
        self.spec = spec
        self.source = source or spec  # what ``spec`` resolved to: a local directory or hub id
        self.revision = revision
        self.adapter: Adapter = adapter_for(model_type)(model, processor, template)
        self.capturer = Capturer(model, self.adapter)

    @property
    def model_type(self) -> str:
        """The config's ``model_type``."""
        return self.model.config.model_type

    @property
    def num_layers(self) -> int:
        """Language-model decoder layers."""
        return self.adapter.num_layers

    @property
    def num_heads(self) -> int:
        """Attention heads per decoder layer."""
        return self.adapter.num_heads

    def capture(
        self,
        images: ImageLike | Sequence[ImageLike],
        phrases: str | Sequence[str],
        heads: Sequence[Head] | None = None,
        **options: Any,
    ) -> list[AttentionMaps]:
        """Query-token attention over the image grid per phrase; see :meth:`localize.capture.Capturer.capture`."""
        return self.capturer.capture(images, phrases, heads, **options)

    def answer(self, image: ImageLike, phrase: str, max_new_tokens: int = 16) -> str:
        """The model's greedy continuation of the grounding prompt for (image, phrase), whitespace-collapsed."""
        batch = self.adapter.prepare([load_image(image)], [phrase])
        device = self.model.device
        inputs = {k: v.to(device) for k, v in batch.inputs.items()}
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.adapter.tokenizer.pad_token_id,
            )
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        text = self.adapter.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return " ".join(text.split())

    def info(self) -> dict[str, Any]:
        """What to record beside results: spec, revision, family, shape, prompt template, versions."""
        import transformers

        from .version import __version__

        return {
            "spec": self.spec,
            "revision": self.revision,
            "model_type": self.model_type,
            "family": self.adapter.family,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "template": self.adapter.template,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "localize": __version__,
            "transformers": transformers.__version__,
        }


def load_model(
    spec: str | tuple[torch.nn.Module, Any] | VLM,
    *,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    template: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    official_preprocessing: bool = True,
) -> VLM:
    """Load a model by alias, hub id or local directory, or wrap a ``(model, processor)`` pair, into a :class:`VLM`.

    dtype ``auto`` is bf16 on GPU and fp32 on CPU. The family's adapter loads it (its model class, and with
    ``official_preprocessing`` the preprocessing its paper used where the hub processor differs: LLaVA-1.5 pads to
    square as the official code does; ``False`` keeps the processor's own setting).
    """
    if isinstance(spec, VLM):
        return spec
    if isinstance(spec, tuple):
        model, processor = spec
        return VLM(model, processor, template=template)
    if not isinstance(spec, (str, os.PathLike)):
        raise UnknownModelError(
            f"model spec must be an alias, a local directory, a hub id, a VLM or a (model, processor) pair; got {spec!r}"
        )
    spec = os.fspath(spec)
    source = resolve_spec(spec)
    target = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, target)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = _load_config(spec, source, kwargs)
    adapter = adapter_for(config.model_type)  # fail early, listing the supported model types
    if os.path.isdir(source):
        check_weights_fit(source, config, adapter.model_class())
    model, processor = adapter.load_pretrained(
        source, dtype=torch_dtype, official_preprocessing=official_preprocessing, **kwargs
    )
    revision = revision or getattr(config, "_commit_hash", None)
    return VLM(model.to(target).eval(), processor, spec=spec, template=template, revision=revision, source=source)


def _load_config(spec: str, source: str, hub_kwargs: dict[str, Any]) -> Any:
    """The model's config; a local folder without a readable ``config.json`` or an unreachable hub id is a one-line
    :class:`UnknownModelError` saying which."""
    from transformers import AutoConfig

    if os.path.isdir(source):
        path = os.path.join(source, "config.json")
        if not os.path.isfile(path):
            raise UnknownModelError(f"{source} has no config.json: it is not a model folder")
        try:
            return AutoConfig.from_pretrained(source, **hub_kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise UnknownModelError(f"cannot read {path}: {' '.join(str(err).split())[:300]}") from None
    try:
        return AutoConfig.from_pretrained(source, **hub_kwargs)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "offline mode (HF_HUB_OFFLINE=1)" if offline else "hub unreachable or no such repo"
        raise UnknownModelError(
            f"cannot load {spec!r} ({source}): {why}. "
            f"Download it where the hub is reachable (`hf download {source} --local-dir DIR`) and pass the "
            "directory: --model DIR / load_model('DIR')."
        ) from err
