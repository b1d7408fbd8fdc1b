"""Word-level tokenizers built programmatically (nothing downloads), with each family's placeholders."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

DEFAULT_WORDS: tuple[str, ...] = tuple(
    [
        "the",
        "a",
        "an",
        "red",
        "blue",
        "green",
        "yellow",
        "black",
        "white",
        "circle",
        "square",
        "triangle",
        "left",
        "right",
        "top",
        "bottom",
        "middle",
        "center",
        "of",
        "on",
        "in",
        "at",
        "above",
        "below",
        "near",
        "next",
        "to",
        "big",
        "small",
        "large",
        "tiny",
        "man",
        "woman",
        "dog",
        "cat",
        "person",
        "car",
        "tree",
        "leftmost",
        "rightmost",
        "biggest",
        "smallest",
        "is",
        "what",
        "color",
        "shape",
        "where",
    ]
)

LLAVA_SPECIALS = ("<unk>", "<pad>", "<s>", "</s>", "<image>")
QWEN_SPECIALS = (
    "<unk>",
    "<pad>",
    "<|endoftext|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def word_tokenizer(words: Iterable[str], specials: Sequence[str], bos: str | None = None, **special_kwargs):
    """A word-level fast tokenizer over ``specials + words`` (whitespace split; unknown words -> ``<unk>``)."""
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in [*specials, *words]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos is not None:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token=bos, **special_kwargs
    )


def normalize_words(tokenizer):
    """Make a word-level tokenizer read ``"The Red Circle."`` as ``"the red circle"``: lower case, and punctuation
    and symbols (emoji included) as spaces; registered special tokens are matched before and stay as they are.
    Returns the tokenizer (changed in place)."""
    tokenizer.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]"), " ")]
    )
    return tokenizer


def qwen_tokenizer(words: Iterable[str]):
    """The word tokenizer with the Qwen-VL image / video placeholders registered."""
    return word_tokenizer(
        words,
        QWEN_SPECIALS,
        eos_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )
