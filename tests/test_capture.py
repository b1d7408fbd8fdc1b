"""Captured maps equal eager ``output_attentions=True`` rows for both families, in every capture mode."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from localize.adapters import ImageView, LlavaAdapter
from localize.capture import Capturer, eager_reference_maps, eager_reference_rows, register_capture_attention
from localize.errors import HeadsMismatchError, InputError

PHRASES = ["the red circle", "the big man on the left of the dog"]  # different lengths
TOL = 1e-5


def _reference(vlm, images, phrases, queries=None):
    batch = vlm.adapter.prepare(images, phrases)
    return eager_reference_maps(vlm.model, vlm.adapter, batch, queries), batch


@pytest.mark.parametrize("early_exit", [False, True])
@pytest.mark.parametrize("reuse_prefix", [False, True])
def test_all_heads_equal_eager(tiny_vlm, noise_image, early_exit, reuse_prefix):
    reference, batch = _reference(tiny_vlm, [noise_image] * 2, PHRASES)
    rows = eager_reference_rows(tiny_vlm.model, tiny_vlm.adapter, batch)
    assert batch.inputs["attention_mask"].sum(1).tolist()[0] < batch.inputs["attention_mask"].shape[1]  # padded
    tiny_vlm.capturer.forward_calls = 0
    results = tiny_vlm.capture(noise_image, PHRASES, early_exit=early_exit, reuse_prefix=reuse_prefix)
    reused = reuse_prefix and tiny_vlm.adapter.prefix_reuse  # a prefix-LM (PaliGemma) declares it cannot
    assert tiny_vlm.capturer.forward_calls == (2 if reused else 1)  # prefix pass + one batched suffix pass
    for result, ref in zip(results, reference):
        dense = result.dense(tiny_vlm.num_layers, tiny_vlm.num_heads)
        assert dense.dtype == torch.float32
        assert dense.shape == ref.shape
        assert (dense - ref).abs().max().item() <= TOL
        torch.testing.assert_close(result.maps.sum((-1, -2)), ref.flatten(0, 1).sum((-1, -2)), atol=TOL, rtol=0)
    for b, (result, row) in enumerate(zip(results, rows)):  # S_img: the mass on every image token of the sample
        expected = row[:, :, batch.all_image_positions(b)].sum(-1).flatten()
        assert (result.image_mass - expected).abs().max().item() <= TOL
        assert result.view_names == tuple(view.name for view in batch.views[b])
        for (_, maps, geometry), view in zip(result.views, batch.views[b]):  # every view's maps, not only the first
            expected = row[:, :, view.positions].reshape(-1, geometry.rows, geometry.cols)
            assert (maps - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("early_exit", [False, True])
@pytest.mark.parametrize("reuse_prefix", [False, True])
def test_head_subset_equals_eager(tiny_vlm, noise_image, early_exit, reuse_prefix):
    heads = [(2, 1), (1, 3), (2, 0)]  # unsorted, several per layer, below the last layer
    reference, _ = _reference(tiny_vlm, [noise_image] * 2, PHRASES)
    results = tiny_vlm.capture(noise_image, PHRASES, heads, early_exit=early_exit, reuse_prefix=reuse_prefix)
    for result, ref in zip(results, reference):
        assert result.heads == tuple(heads)
        expected = torch.stack([ref[layer, head] for layer, head in heads])
        assert (result.maps - expected).abs().max().item() <= TOL
        assert (result.select([(1, 3)])[0] - ref[1, 3]).abs().max().item() <= TOL


def test_one_image_per_phrase(tiny_vlm, noise_image):
    other = noise_image.transpose(0).resize((120, 150))  # a different, portrait image
    reference, _ = _reference(tiny_vlm, [noise_image, other], PHRASES)
    results = tiny_vlm.capture([noise_image, other], PHRASES)
    for result, ref in zip(results, reference):
        assert (result.dense(tiny_vlm.num_layers, tiny_vlm.num_heads) - ref).abs().max().item() <= TOL
    assert results[1].geometry.image_size == (120, 150)


def test_explicit_query_position(tiny_vlm, noise_image):
    batch = tiny_vlm.adapter.prepare([noise_image] * 2, PHRASES)
    queries = batch.last_positions - 1  # the second-to-last real token
    reference = eager_reference_maps(tiny_vlm.model, tiny_vlm.adapter, batch, queries)
    results = tiny_vlm.capture(noise_image, PHRASES, query_positions=[-2, -2])
    for result, ref, q in zip(results, reference, queries):
        assert result.query_position == int(q)
        assert (result.dense(tiny_vlm.num_layers, tiny_vlm.num_heads) - ref).abs().max().item() <= TOL


def test_head_width_apart_from_hidden_over_heads(noise_image):
    """Heads narrower than ``hidden / heads`` (LLaVA's 128 of 4096; the shapes trials' 8 of 128) capture exactly."""
    from localize.models import VLM
    from localize.testing import tiny_llava

    vlm = VLM(*tiny_llava(hidden=64, heads=8, kv_heads=4, head_dim=4))
    assert vlm.model.model.language_model.layers[0].self_attn.q_proj.out_features == 32
    reference, _ = _reference(vlm, [noise_image] * 2, PHRASES)
    results = vlm.capture(noise_image, PHRASES, reuse_prefix=True)
    for result, ref in zip(results, reference):
        assert result.maps.shape[0] == vlm.num_layers * 8
        assert (result.dense(vlm.num_layers, vlm.num_heads) - ref).abs().max().item() <= TOL


def test_a_left_padding_tokenizer_is_padded_right(tiny_llava_vlm, noise_image):
    """F4: a tokenizer that pads left (InternVL's default) still gets right-padded inputs, so positions and the
    shared image prefix hold and the maps stay exact; the user's tokenizer setting is left as it was."""
    tokenizer = tiny_llava_vlm.processor.tokenizer
    tokenizer.padding_side = "left"
    try:
        reference, batch = _reference(tiny_llava_vlm, [noise_image] * 2, PHRASES)
        tiny_llava_vlm.capturer.forward_calls = 0
        results = tiny_llava_vlm.capture(noise_image, PHRASES)
        assert tokenizer.padding_side == "left"
    finally:
        tokenizer.padding_side = "right"
    assert batch.inputs["attention_mask"][:, 0].all() and not batch.inputs["attention_mask"][:, -1].all()
    assert tiny_llava_vlm.capturer.forward_calls == 2  # the prefix was shared
    for result, ref in zip(results, reference):
        assert (result.dense(tiny_llava_vlm.num_layers, tiny_llava_vlm.num_heads) - ref).abs().max().item() <= TOL


class _HalvesAdapter(LlavaAdapter):
    """LLaVA's grid as two views (the top rows ground, the bottom rows are a second view): the seam tiled
    families use, on a model whose eager rows are known."""

    def views(self, inputs, index, image_size):
        (whole,) = super().views(inputs, index, image_size)
        grid, top_rows = whole.geometry, whole.geometry.rows // 2
        top = dataclasses.replace(grid, rows=top_rows)
        bottom = dataclasses.replace(grid, rows=grid.rows - top_rows, y_offset=grid.y_offset + grid.y_scale * top_rows)
        cut = top_rows * grid.cols
        return ImageView(whole.positions[:cut], top, "top"), ImageView(whole.positions[cut:], bottom, "bottom")


class _CrossOnlyAdapter(LlavaAdapter):
    """As a cross-attention family (mllama) declares: only some layers see the image."""

    capturable_layers = (1, 3)
    capturable_layers_doc = "layers 1 and 3"


def test_layers_an_adapter_declares_blind_to_the_image_are_refused(tiny_llava_vlm, noise_image):
    model, processor = tiny_llava_vlm.model, tiny_llava_vlm.processor
    capturer = Capturer(model, _CrossOnlyAdapter(model, processor))
    try:
        with pytest.raises(HeadsMismatchError, match=r"layers \[0\].*layers 1 and 3"):
            capturer.capture(noise_image, ["the dog"], [(0, 1), (1, 1)])
        assert {layer for layer, _ in capturer.capture(noise_image, ["the dog"])[0].heads} == {1, 3}
    finally:
        tiny_llava_vlm.adapter.set_attention(register_capture_attention())


def test_views_ground_on_the_first_and_count_every_image_token(tiny_llava_vlm, noise_image):
    model, processor = tiny_llava_vlm.model, tiny_llava_vlm.processor
    adapter = _HalvesAdapter(model, processor)
    capturer = Capturer(model, adapter)
    try:
        batch = adapter.prepare([noise_image] * 2, PHRASES)
        rows = eager_reference_rows(model, adapter, batch)
        results = capturer.capture(noise_image, PHRASES)
    finally:
        tiny_llava_vlm.adapter.set_attention(register_capture_attention())
    for b, (result, row) in enumerate(zip(results, rows)):
        top = batch.views[b][0]
        assert result.geometry == top.geometry and result.maps.shape[1:] == (top.geometry.rows, top.geometry.cols)
        expected = row[:, :, top.positions].flatten(0, 1).reshape(result.maps.shape)
        assert (result.maps - expected).abs().max().item() <= TOL
        mass = row[:, :, batch.all_image_positions(b)].sum(-1).flatten()
        assert (result.image_mass - mass).abs().max().item() <= TOL
        assert bool((result.image_mass > result.maps.sum((-1, -2)) + 1e-4).all())  # the second view counts


def test_differentiable_capture_reaches_parameters(tiny_llava_vlm, noise_image):
    model = tiny_llava_vlm.model
    with torch.enable_grad():
        result = tiny_llava_vlm.capture(noise_image, ["the red circle"], [(1, 0)], differentiable=True)[0]
        assert result.maps.requires_grad
        result.maps.pow(2).sum().backward()
    q_grad = model.model.language_model.layers[1].self_attn.q_proj.weight.grad
    assert q_grad is not None and q_grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_bad_requests(tiny_llava_vlm, noise_image):
    with pytest.raises(InputError, match="empty"):
        tiny_llava_vlm.capture(noise_image, ["   "])
    with pytest.raises(HeadsMismatchError, match="does not fit"):
        tiny_llava_vlm.capture(noise_image, ["the dog"], [(tiny_llava_vlm.num_layers, 0)])
    with pytest.raises(HeadsMismatchError, match="does not fit"):
        tiny_llava_vlm.capture(noise_image, ["the dog"], [(0, tiny_llava_vlm.num_heads)])
    with pytest.raises(InputError, match="longer than the model's context"):
        tiny_llava_vlm.capture(noise_image, ["dog " * 5000])
    with pytest.raises(InputError, match="query positions"):
        tiny_llava_vlm.capture(noise_image, ["the dog"], query_positions=[10_000])


def test_logit_softcap_is_applied_to_the_captured_rows(noise_image):
    """PaliGemma 2 (Gemma 2): SDPA cannot cap logits, so the capture runs the family's eager attention and caps the
    recorded logits as it does (F2); a cap of 0.02 changes the rows of random weights, so a missing cap would show."""
    from localize.models import VLM
    from localize.testing import tiny_paligemma

    vlm = VLM(*tiny_paligemma(version=2, softcap=0.02))
    reference, _ = _reference(vlm, [noise_image] * 2, PHRASES)
    results = vlm.capture(noise_image, PHRASES)
    for result, ref in zip(results, reference):
        assert (result.dense(vlm.num_layers, vlm.num_heads) - ref).abs().max().item() <= TOL
    vlm.model.config.text_config.attn_logit_softcapping = None
    for layer in vlm.model.model.language_model.layers:
        layer.self_attn.attn_logit_softcapping = None
    uncapped, _ = _reference(vlm, [noise_image] * 2, PHRASES)
    assert max((u - r).abs().max().item() for u, r in zip(uncapped, reference)) > 1e-3


@pytest.mark.parametrize("family", ["tiny_llava_vlm", "tiny_qwen_vlm"])
def test_suffix_passes_of_any_size_give_the_same_rows(request, family, noise_image):
    """The phrases after a shared prefix, in passes of 1, 2 or all 5: the same rows as eager, one prefix pass."""
    vlm = request.getfixturevalue(family)
    phrases = [*PHRASES, "a dog", "the tree", "the small blue car on the right"]
    reference, _ = _reference(vlm, [noise_image] * len(phrases), phrases)
    for suffix_batch in (1, 2, 5):
        vlm.capturer.forward_calls = 0
        results = vlm.capture(noise_image, phrases, early_exit=False, suffix_batch=suffix_batch)
        assert vlm.capturer.forward_calls == 1 + -(-len(phrases) // suffix_batch)
        for result, ref in zip(results, reference):
            assert (result.dense(vlm.num_layers, vlm.num_heads) - ref).abs().max().item() <= TOL
    with pytest.raises(InputError, match="suffix_batch"):
        vlm.capture(noise_image, phrases, suffix_batch=0)
