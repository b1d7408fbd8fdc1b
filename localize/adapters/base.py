"""What an adapter knows about one model family: prompts, image tokens, their grid and its geometry.

Everything else in the toolkit is model-agnostic and talks to a model only through an :class:`Adapter`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image

from ..errors import InputError
from ..geometry import GridGeometry

PHRASE_FIELD = "{phrase}"


@dataclass(frozen=True)
class ImageView:
    """One view of a sample's image: its tokens' sequence indices in grid (row-major) order and that grid's
    geometry. A family with one grid has one view; a tiled family (a base view and a hi-res grid, or tiles and a
    thumbnail) has several, and the first is the one that grounds."""

    positions: torch.Tensor
    geometry: GridGeometry
    name: str = "image"

    def shifted(self, offset: int) -> ImageView:
        """The same view with every position moved by ``offset`` (a re-laid sequence)."""
        return ImageView(self.positions + offset, self.geometry, self.name)


@dataclass
class PreparedBatch:
    """Model inputs for a batch of (image, phrase) pairs plus where each sample's image tokens sit.

    ``views[b]`` are sample b's image views (the first grounds); ``last_positions[b]`` is the index of sample b's
    last real (non-padding) token.
    """

    inputs: dict[str, torch.Tensor]
    prompts: list[str]
    views: list[tuple[ImageView, ...]]
    last_positions: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        """Number of samples."""
        return len(self.prompts)

    @property
    def image_positions(self) -> list[torch.Tensor]:
        """Per sample, the grounding view's token indices in grid order."""
        return [views[0].positions for views in self.views]

    @property
    def geometries(self) -> list[GridGeometry]:
        """Per sample, the grounding view's geometry."""
        return [views[0].geometry for views in self.views]

    def all_image_positions(self, sample: int) -> torch.Tensor:
        """Every image token of ``sample``, over all its views (S_img is the attention mass on these)."""
        return torch.cat([view.positions for view in self.views[sample]])


class Adapter(ABC):
    """Family-specific knowledge; one subclass per model family, chosen by ``config.model_type``."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    default_template: ClassVar[str]
    # The text the processor expands into the image tokens; a template must hold it (None: the processor adds them).
    image_placeholder: ClassVar[str | None] = None
    text_config_key: ClassVar[str] = "text_config"
    description: ClassVar[str] = ""
    # Attribute names of the vision side (encoder, projector / merger) inside the model, for fine-tuning it.
    vision_modules: ClassVar[tuple[str, ...]] = ()
    # Capabilities, declared rather than found by crashing. ``prefix_reuse``: the image tokens' keys do not depend on
    # the text after them (causal; not a prefix-LM), so one image prefix can serve several phrases.
    prefix_reuse: ClassVar[bool] = True
    # Tokens the prompt template puts after the phrase's last token (the default query is that token).
    query_offset: ClassVar[int] = 0
    # ``token_type_ids`` of answer tokens appended for training (text 0; a prefix-LM's causal suffix 1).
    answer_token_type: ClassVar[int] = 0
    # The views :meth:`views` returns, grounding view first (tiled families: a hi-res grid and a base view).
    view_names: ClassVar[tuple[str, ...]] = ("image",)
    # Which decoder layers see the image tokens (see :attr:`capturable_layers`), for ``localize models``.
    capturable_layers_doc: ClassVar[str] = "every decoder layer"
    # How the language model's attention is captured (families with a logit softcap run their eager function).
    attention_doc: ClassVar[str] = "SDPA + recorded query rows"

    def __init__(self, model: torch.nn.Module, processor: Any, template: str | None = None) -> None:
        self.model = model
        self.processor = processor
        self.template = template or self.default_template
        if PHRASE_FIELD not in self.template:
            raise InputError(f"prompt template must contain {PHRASE_FIELD!r}: {self.template!r}")
        if self.image_placeholder and self.image_placeholder not in self.template:
            raise InputError(
                f"a {self.family} prompt template must contain the image placeholder {self.image_placeholder!r} "
                f"(default {self.default_template!r}): {self.template!r}"
            )

    # -- language-model shape -------------------------------------------------------------------------------
    @property
    def text_config(self) -> Any:
        """The language model's config."""
        return self.model.config.get_text_config()

    @property
    def num_layers(self) -> int:
        """Decoder layers of the language model."""
        return int(self.text_config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        """Query heads per decoder layer."""
        return int(self.text_config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads per decoder layer (GQA when fewer than query heads)."""
        return int(getattr(self.text_config, "num_key_value_heads", None) or self.num_heads)

    @property
    def vision_grid_side(self) -> int:
        """Tokens per side of a fixed square grid: the vision config's ``image_size / patch_size``."""
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def image_size_setting(self, key: str) -> int | None:
        """One entry of the image processor's ``size`` (a dict or a ``SizeDict``), e.g. ``"longest_edge"``."""
        size = getattr(self.processor.image_processor, "size", None) or {}
        value = size.get(key) if hasattr(size, "get") else getattr(size, key, None)
        return int(value) if value else None

    @property
    def max_input_side(self) -> int | None:
        """The longest image side the processor can use at full resolution, where it exceeds the toolkit's
        ``MAX_SIDE`` reduction (Qwen's pixel budget); None: the family's input is smaller than that."""
        return None

    @property
    def fixed_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the grid when it is the same for every image; None where it follows the image (Qwen)."""
        return None

    @property
    def capturable_layers(self) -> tuple[int, ...]:
        """Decoder layers whose attention reaches the image tokens (all of them where the image is in the sequence;
        a cross-attention family would name only its cross-attention layers)."""
        return tuple(range(self.num_layers))

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer."""
        return self.processor.tokenizer

    def set_attention(self, implementation: str) -> None:
        """Use ``implementation`` for the language model and keep SDPA for every other sub-model (vision tower)."""
        sub_configs = getattr(self.model.config, "sub_configs", {}) or {}
        if not sub_configs:
            self.model.set_attn_implementation(implementation)
            return
        choice = {key: ("sdpa" if key != self.text_config_key else implementation) for key in sub_configs}
        self.model.set_attn_implementation(choice)

    # -- prompts and inputs ---------------------------------------------------------------------------------
    def format_prompt(self, phrase: str) -> str:
        """The model's text for one phrase, from the template (image placeholder, then the phrase)."""
        return self.template.replace(PHRASE_FIELD, phrase)

    def prepare(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> PreparedBatch:
        """Tokenize and preprocess aligned lists of RGB images and phrases, padded on the right (F4: some
        processors, InternVL's among them, default to left, which would shift every position and defeat prefix
        reuse)."""
        if len(images) != len(phrases):
            raise InputError(f"{len(images)} images for {len(phrases)} phrases")
        prompts = [self.format_prompt(p) for p in phrases]
        inputs = self.processor(
            images=self.processor_images(images), text=prompts, return_tensors="pt", padding=True, padding_side="right"
        )
        # labels (PaliGemma's processor returns them) would make the forward compute a loss over every position
        inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor) and k != "labels"}
        mask = inputs["attention_mask"]
        positions = torch.arange(mask.shape[1]).expand_as(mask)
        last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values
        views = [self.views(inputs, b, img.size) for b, img in enumerate(images)]
        for b, sample_views in enumerate(views):
            for view in sample_views:
                cells = view.geometry.rows * view.geometry.cols
                if view.positions.numel() != cells:
                    raise RuntimeError(
                        f"sample {b}, view {view.name!r}: {view.positions.numel()} image tokens for a "
                        f"{view.geometry.rows}x{view.geometry.cols} grid; the processor and model config disagree"
                    )
        return PreparedBatch(inputs, prompts, views, last)

    def views(self, inputs: dict[str, torch.Tensor], index: int, image_size: tuple[int, int]) -> tuple[ImageView, ...]:
        """Sample ``index``'s image views, the grounding one first; one grid by default (tiled families override)."""
        return (ImageView(self.image_token_positions(inputs, index), self.geometry(image_size, inputs, index)),)

    def processor_images(self, images: Sequence[Image.Image]) -> list:
        """The images as the processor takes them for one image per prompt (a flat list; some want one list each)."""
        return list(images)

    def image_token_positions(self, inputs: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        """Sequence indices of sample ``index``'s image tokens, in grid row-major order."""
        return (inputs["input_ids"][index] == self.image_token_id).nonzero().flatten()

    @property
    def image_token_id(self) -> int:
        """Token id of an image cell in the expanded sequence: ``config.image_token_id`` (families with another
        name or marker override it)."""
        return int(self.model.config.image_token_id)

    @abstractmethod
    def geometry(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor], index: int) -> GridGeometry:
        """Grid <-> original-pixel map for sample ``index`` whose original image is ``image_size`` (w, h)."""

    # -- prefix reuse ---------------------------------------------------------------------------------------
    def position_ids(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Explicit position ids for the full sequences when the family needs them (M-RoPE); else None."""
        return None

    def prefix_inputs(self, batch: PreparedBatch, length: int) -> dict[str, torch.Tensor]:
        """Inputs of sample 0's first ``length`` tokens (they hold the whole image) for a cached prefix pass."""
        inputs = batch.inputs
        out = {"input_ids": inputs["input_ids"][:1, :length], "attention_mask": inputs["attention_mask"][:1, :length]}
        out.update(self.image_inputs(inputs, sample=0))
        return out

    def suffix_inputs(self, batch: PreparedBatch, length: int) -> dict[str, torch.Tensor]:
        """Inputs of every sample's tokens after the shared ``length``-token prefix, without image inputs."""
        inputs = batch.inputs
        suffix_len = inputs["input_ids"].shape[1] - length
        return {
            "input_ids": inputs["input_ids"][:, length:],
            "attention_mask": inputs["attention_mask"],
            "position_ids": (torch.arange(suffix_len) + length).expand(batch.batch_size, -1),
        }

    def slice_suffix(self, suffix: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
        """Samples ``start:stop`` of :meth:`suffix_inputs` (every tensor's first axis is the batch)."""
        return {key: value[start:stop] for key, value in suffix.items()}

    def image_inputs(self, inputs: dict[str, torch.Tensor], sample: int) -> dict[str, torch.Tensor]:
        """The image tensors of one sample (pixel values and the family's extras)."""
        return {"pixel_values": inputs["pixel_values"][sample : sample + 1]}

    # -- loading --------------------------------------------------------------------------------------------
    @classmethod
    def load_pretrained(
        cls, source: str, *, dtype: torch.dtype, official_preprocessing: bool = True, **hub_kwargs: Any
    ) -> tuple[torch.nn.Module, Any]:
        """This family's model (on CPU) and processor from a local directory or hub id."""
        from transformers import AutoProcessor

        model = cls.model_class().from_pretrained(source, dtype=dtype, **hub_kwargs)
        processor = AutoProcessor.from_pretrained(source, **hub_kwargs)
        return model, (cls.official_processor(processor) if official_preprocessing else processor)

    @classmethod
    def model_class(cls) -> type:
        """The transformers class that loads this family with its language-model head."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    @classmethod
    def official_processor(cls, processor: Any) -> Any:
        """The processor set up as the family's paper preprocessed (default: as the hub ships it)."""
        return processor

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """What this adapter supports (for ``localize models``)."""
        return {
            "family": cls.family,
            "model_types": list(cls.model_types),
            "template": cls.default_template,
            "prefix_reuse": cls.prefix_reuse,
            "query_offset": cls.query_offset,
            "views": list(cls.view_names),
            "capturable_layers": cls.capturable_layers_doc,
            "attention": cls.attention_doc,
            "notes": cls.description,
        }
