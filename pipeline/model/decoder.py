"""SAM 2's mask decoder for many prompts on one image, without repeated work.

sam2's ``MaskDecoder`` copies the image embedding and its positional encoding once per prompt
and then projects every copy. Two cuts, each giving sam2's values to float rounding:

- **The shared image side** (``method="shared"``, and the first block of both methods): until
  the first two-way block's image-to-token attention updates it, the image is the same for
  every prompt (no mask prompt), so its keys, values and queries are projected once.
- **Re-association** (``method="reassociated"``, the default): after that update each prompt
  has its own (hw × c) image, and projecting it costs (hw × c)·(c × c/2) per projection, four
  per block. Attention only ever needs those projections multiplied by a handful of token
  vectors, so the products are taken on the token side instead: token-to-image scores are
  ``(q_h W_k,h) xᵀ`` and its values ``(A x) W_v,hᵀ``; image-to-token scores are
  ``x (W_q,hᵀ k_h)`` and its output ``A (v_h W_o,hᵀ)``, with the residual added inside the
  same product. No image row is projected: about half the multiply-adds per prompt. A bias
  that adds the same number to every score of a query is dropped (softmax ignores it); a
  value bias comes out unchanged because each query's weights sum to 1.
- **Upscaling in token order** (with re-association): each 2×2, stride-2 transposed
  convolution is one matrix product giving every pixel's four children side by side, the
  high-resolution features and the LayerNorm are taken in that order, and pixels are put in
  place only on the final (b, masks, 4h, 4w) logits: no channel-first copies of the upscaled
  features, one LayerNorm pass instead of sam2's five.

``benchmarks/generator_bench.py`` compares the methods (``--variants fast,fast-shared``); the
tests hold both to sam2's generator.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def decode(
    decoder: Any,
    image_embed: Tensor,
    image_pe: Tensor,
    sparse: Tensor,
    dense: Tensor,
    high_res: list[Tensor],
    multimask: bool,
    iou_threshold: float = 0.0,
    count: int | None = None,
    method: str = "reassociated",
    compiled: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The masks of ``b`` prompts whose predicted IoU is above ``iou_threshold``.

    A mask's predicted IoU comes from the transformer's IoU token, before the decoder upscales
    anything, so the upscaling and mask products run only for prompts with a mask to keep.
    Kept masks are exactly what ``MaskDecoder.forward`` gives for them.

    Args:
        decoder: the model's ``sam_mask_decoder``.
        image_embed: (1, c, h, w) the image's lowest-resolution features.
        image_pe: (1, c, h, w) ``sam_prompt_encoder.get_dense_pe()``.
        sparse: (b, t, c) prompt embeddings.
        dense: (1 or b, c, h, w) dense prompt embeddings; all rows must be equal (no mask
            prompt), which is what lets the image side be shared.
        high_res: the two (1, c_i, h_i, w_i) high-resolution feature maps.
        multimask: the three multimask outputs per prompt (else one, as sam2 picks it).
        iou_threshold: keep masks whose predicted IoU is above this (0 keeps all, as sam2).
        count: only the first ``count`` prompts are real (the rest pad a fixed batch size).
        method: ``reassociated`` or ``shared`` (see the module docstring).
        compiled: run the transformer under ``torch.compile`` (``compiled_transformer``).

    Returns:
        Low-resolution logits (n, 4h, 4w) and predicted IoUs (n,) of the kept masks, and each
        one's row in the (b * m) flattening of sam2's (b, m) outputs, in that order.
    """
    tokens = output_tokens(decoder, sparse)
    if method not in METHODS:
        raise ValueError(f"decoder method {method!r} is not one of {sorted(METHODS)}")
    run_transformer, heads = METHODS[method]
    if compiled:
        run_transformer = compiled_transformer(method)
    dynamic = not multimask and decoder.dynamic_multimask_via_stability and not decoder.training
    # sam2 picks a single output by the masks' own stability: then every mask is needed
    outputs = range(0, 4) if dynamic else range(1, 4) if multimask else range(0, 1)
    first = 1 if decoder.pred_obj_scores else 0
    needed = [first, *(first + 1 + i for i in outputs)]  # the IoU token, the wanted masks'
    queries, keys = run_transformer(
        decoder.transformer, image_embed + dense[:1], image_pe, tokens, needed
    )
    iou_pred = decoder.iou_prediction_head(queries[:, 0])
    mask_queries = queries[:, 1:]  # (b, len(outputs), c)
    if dynamic:
        every = heads(decoder, mask_queries, keys, image_embed.shape, high_res, outputs)
        masks, iou = decoder._dynamic_multimask_via_stability(every, iou_pred)
    else:
        iou = iou_pred[:, outputs.start : outputs.stop]
    keep = iou > iou_threshold if iou_threshold > 0 else torch.ones_like(iou, dtype=torch.bool)
    if count is not None:
        keep[count:] = False
    prompts = keep.any(dim=1).nonzero()[:, 0]
    if dynamic:
        masks = masks[prompts]
    else:
        masks = heads(
            decoder, mask_queries[prompts], keys[prompts], image_embed.shape, high_res, outputs
        )
    rows = keep.flatten().nonzero()[:, 0]
    return masks[keep[prompts]], iou.flatten()[rows], rows


COMPILED: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {}


def compiled_transformer(method: str) -> Callable[..., tuple[Tensor, Tensor]]:
    """``method``'s transformer under ``torch.compile``, made once per process.

    Only the transformer is compiled: it has static shapes when prompt batches are padded to
    one size, and fusing its elementwise work (positional-encoding adds, LayerNorms, softmax)
    pays; the rest of ``decode`` keeps a data-dependent number of prompts (those with a mask
    above the IoU threshold), which would recompile or break the graph.
    """
    if method not in COMPILED:
        COMPILED[method] = torch.compile(METHODS[method][0], dynamic=False)
    return COMPILED[method]


def output_tokens(decoder: Any, sparse: Tensor) -> Tensor:
    """The learned output tokens followed by each prompt's sparse embeddings: (b, t', c)."""
    learned = [decoder.iou_token.weight, decoder.mask_tokens.weight]
    if decoder.pred_obj_scores:
        learned.insert(0, decoder.obj_score_token.weight)
    out = torch.cat(learned, dim=0).unsqueeze(0).expand(sparse.size(0), -1, -1)
    return torch.cat((out, sparse), dim=1)


def transformer(
    model: Any, src: Tensor, pe: Tensor, tokens: Tensor, needed: list[int] | None = None
) -> tuple[Tensor, Tensor]:
    """``TwoWayTransformer.forward`` with the first block's image side computed once; the
    final queries of the ``needed`` tokens only (all by default), in that order."""
    image = src.flatten(2).permute(0, 2, 1)  # (1, hw, c)
    image_pe = pe.flatten(2).permute(0, 2, 1)
    queries, keys = first_block(model.layers[0], tokens, image, tokens, image_pe)
    for layer in model.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=image_pe)
    if needed is not None:
        queries, tokens = queries[:, needed], tokens[:, needed]
    q = queries + tokens
    k = keys + image_pe
    queries = model.norm_final_attn(queries + model.final_attn_token_to_image(q=q, k=k, v=keys))
    return queries, keys


def first_block(
    block: Any, queries: Tensor, image: Tensor, query_pe: Tensor, image_pe: Tensor
) -> tuple[Tensor, Tensor]:
    """``TwoWayAttentionBlock.forward`` where the keys (the image) are one shared row."""
    if block.skip_first_layer_pe:
        queries = block.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + block.self_attn(q=q, k=q, v=queries)
    queries = block.norm1(queries)

    # Tokens attending to the image: every prompt's queries against the same keys and values.
    attn = block.cross_attn_token_to_image
    keyed = image + image_pe
    b, t, _ = queries.shape
    q = (queries + query_pe).reshape(1, b * t, -1)
    out = attention(attn, attn.q_proj(q), attn.k_proj(keyed), attn.v_proj(image))
    queries = block.norm2(queries + attn.out_proj(out).reshape(b, t, -1))
    queries = block.norm3(queries + block.mlp(queries))

    # The image attending to each prompt's tokens: shared queries, per-prompt keys and values.
    attn = block.cross_attn_image_to_token
    k = attn.k_proj(queries + query_pe)
    v = attn.v_proj(queries)
    q = attn.q_proj(keyed).expand(b, -1, -1)
    out = attn.out_proj(attention(attn, q, k, v))
    return queries, block.norm4(image + out)


def attention(attn: Any, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``Attention.forward`` after its input projections (heads, SDPA, recombine)."""
    heads = attn.num_heads
    q, k, v = (attn._separate_heads(x, heads) for x in (q, k, v))
    return attn._recombine_heads(F.scaled_dot_product_attention(q, k, v))


def shared_heads(
    decoder: Any,
    mask_queries: Tensor,
    keys: Tensor,
    shape: torch.Size,
    high_res: list[Tensor],
    outputs: range,
) -> Tensor:
    """``MaskDecoder.predict_masks`` after the transformer: upscaling and the mask products,
    for the mask tokens in ``outputs`` (0: single mask, 1-3: multimask), whose final queries
    are ``mask_queries`` (b, len(outputs), c).

    Returns:
        (b, len(outputs), 4h, 4w) mask logits.
    """
    _, c, h, w = shape
    b = mask_queries.shape[0]
    src = keys.transpose(1, 2).reshape(b, c, h, w)
    if decoder.use_high_res_features:
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        feat_s0, feat_s1 = high_res
        upscaled = act1(ln1(dc1(src) + feat_s1))
        upscaled = act2(dc2(upscaled) + feat_s0)
    else:
        upscaled = decoder.output_upscaling(src)
    hyper_in = hypernetwork_weights(decoder, mask_queries, outputs)
    _, c, h, w = upscaled.shape
    return (hyper_in @ upscaled.view(b, c, h * w)).view(b, len(outputs), h, w)


def heads_of(linear: Any, heads: int) -> tuple[Tensor, Tensor]:
    """A projection's weight as (heads, head_dim, in) and bias as (heads, head_dim)."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.view(heads, out_dim // heads, in_dim), linear.bias.view(heads, -1)


def token_to_image(attn: Any, q_in: Tensor, image: Tensor, keyed: Tensor) -> Tensor:
    """``attn(q=q_in, k=keyed, v=image)`` with the products taken on the token side: no image
    row is projected. ``q_in``: (b, t, c); ``image``, ``keyed``: (b, hw, c).

    The keys' bias adds the same number to every score of a query: softmax ignores it. The
    values' bias comes out unchanged, as each query's weights sum to 1.
    """
    heads = attn.num_heads
    b, t, _ = q_in.shape
    wk, _ = heads_of(attn.k_proj, heads)
    wv, bv = heads_of(attn.v_proj, heads)
    q = attn.q_proj(q_in).view(b, t, heads, -1).transpose(1, 2)  # (b, H, t, d)
    scale = 1.0 / math.sqrt(q.shape[-1])
    q_image = torch.einsum("bhtd,hdc->bhtc", q * scale, wk).reshape(b, heads * t, -1)
    scores = exact_product(q_image, keyed.transpose(1, 2))  # (b, H t, hw)
    weights = scores.softmax(dim=-1)
    mixed = (weights @ image).view(b, heads, t, -1)  # (b, H, t, c)
    out = torch.einsum("bhtc,hdc->bthd", mixed, wv) + bv
    return attn.out_proj(out.reshape(b, t, -1))


def image_to_token_update(
    attn: Any, norm: Any, image: Tensor, keyed: Tensor, k_in: Tensor, v_in: Tensor
) -> Tensor:
    """``norm(image + attn(q=keyed, k=k_in, v=v_in))`` with the products taken on the token
    side: the image's queries are never projected, nor its outputs; the output bias rides in
    the values (each query's weights over a head's tokens sum to 1).

    ``image``, ``keyed``: (b, hw, c); ``k_in``, ``v_in``: (b, t, c).
    """
    heads = attn.num_heads
    b, t, c = k_in.shape
    wq, bq = heads_of(attn.q_proj, heads)
    k = attn.k_proj(k_in).view(b, t, heads, -1).transpose(1, 2)  # (b, H, t, d)
    v = attn.v_proj(v_in).view(b, t, heads, -1).transpose(1, 2)
    scale = 1.0 / math.sqrt(k.shape[-1])
    k = k * scale
    # scores[b, (h, t), n] = (wq_h^T k_h,t) · keyed[b, n] + bq_h · k_h,t, kept as (H t, hw):
    # a softmax over 8 tokens is 16 times faster on a middle axis than on the last
    k_image = torch.einsum("hdc,bhtd->bhtc", wq, k).reshape(b, heads * t, c)
    k_bias = torch.einsum("hd,bhtd->bht", bq, k).reshape(b, heads * t, 1)
    scores = exact_product(k_image, keyed.transpose(1, 2), k_bias)  # (b, H t, hw)
    weights = scores.view(b, heads, t, -1).softmax(dim=2).view(b, heads * t, -1)
    v_image = output_values(attn, v)
    return norm(plus_product(image, weights.transpose(1, 2), v_image))


def output_values(attn: Any, v: Tensor) -> Tensor:
    """Image-to-token values already through the output projection, ``v_h W_o,hᵀ`` stacked
    over heads and tokens: (b, H t, c). The output bias rides in them, a share per head: each
    image query's weights over one head's tokens sum to 1.

    Args:
        attn: the image-to-token ``Attention``.
        v: (b, H, t, d) its values, heads apart.
    """
    b, heads, t, _ = v.shape
    c = attn.out_proj.out_features
    wo = attn.out_proj.weight.view(c, heads, -1)  # (c, H, d)
    v_image = torch.einsum("bhtd,chd->bhtc", v, wo).reshape(b, heads * t, c)
    return v_image + attn.out_proj.bias / heads


def shared_token_to_image(attn: Any, q_in: Tensor, image: Tensor, keyed: Tensor) -> Tensor:
    """``attn(q=q_in, k=keyed, v=image)`` where the image is one row shared by every prompt:
    its keys and values are projected once."""
    b, t, _ = q_in.shape
    q = attn.q_proj(q_in).reshape(1, b * t, -1)
    out = attention(attn, q, attn.k_proj(keyed), attn.v_proj(image))
    return attn.out_proj(out).reshape(b, t, -1)


def shared_image_to_token_update(
    attn: Any, norm: Any, image: Tensor, keyed: Tensor, k_in: Tensor, v_in: Tensor
) -> Tensor:
    """``norm(image + attn(q=keyed, k=k_in, v=v_in))`` where the image is one shared row: its
    queries are projected once; the outputs are taken on the token side."""
    heads = attn.num_heads
    b, t, c = k_in.shape
    q = attn.q_proj(keyed)[0].view(-1, heads, attn.internal_dim // heads)  # (hw, H, d)
    k = attn.k_proj(k_in).view(b, t, heads, -1)
    v = attn.v_proj(v_in).view(b, t, heads, -1).transpose(1, 2)
    scale = 1.0 / math.sqrt(q.shape[-1])
    with exact(q):
        scores = torch.einsum("nhd,bthd->bhtn", q.float() * scale, k.float())  # (b, H, t, hw)
    weights = scores.softmax(dim=2).reshape(b, heads * t, -1).transpose(1, 2)
    v_image = output_values(attn, v)
    return norm(plus_product(image, weights, v_image))


def exact(tensor: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on ``tensor``'s device: attention scores feed a softmax, and sam2's own
    attention keeps them in float32 (a bfloat16 score of 10 is off by up to 0.04, a 4 %
    change of its weight)."""
    return torch.autocast(tensor.device.type, enabled=False)


def exact_product(left: Tensor, right: Tensor, bias: Tensor | None = None) -> Tensor:
    """``bias + left @ right`` in float32 (attention scores; see ``exact``)."""
    with exact(left):
        left, right = left.float(), right.float()
        return left @ right if bias is None else torch.baddbmm(bias.float(), left, right)


def plus_product(image: Tensor, weights: Tensor, values: Tensor) -> Tensor:
    """``image + weights @ values``, the residual added inside the product; under autocast the
    product is made apart and added in ``image``'s float32, as sam2 adds it (``baddbmm`` would
    round the image to bfloat16 first)."""
    b = weights.shape[0]
    if torch.is_autocast_enabled(image.device.type):
        return image + torch.bmm(weights, values)
    return torch.baddbmm(image.expand(b, -1, -1), weights, values)


def reassociated_transformer(
    model: Any, src: Tensor, pe: Tensor, tokens: Tensor, needed: list[int] | None = None
) -> tuple[Tensor, Tensor]:
    """``TwoWayTransformer.forward``, re-associated (same values to float rounding): the
    first block on the shared image, the others on each prompt's image from the token side.

    Args:
        model: the decoder's ``TwoWayTransformer``.
        src: (1, c, h, w) the image embedding plus the dense prompt embedding.
        pe: (1, c, h, w) the image's positional encoding.
        tokens: (b, t, c) output tokens and prompt embeddings.
        needed: the tokens whose final queries are wanted (all by default): the last
            attention runs for them alone (the others' final values feed nothing).

    Returns:
        Final queries (b, len(needed), c) and each prompt's image (b, hw, c).
    """
    image = src.flatten(2).permute(0, 2, 1)  # (1, hw, c)
    image_pe = pe.flatten(2).permute(0, 2, 1)
    queries, keys = tokens, image
    for index, block in enumerate(model.layers):
        if block.skip_first_layer_pe:
            queries = block.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + tokens
            queries = queries + block.self_attn(q=q, k=q, v=queries)
        queries = block.norm1(queries)
        keyed = keys + image_pe
        shared = index == 0  # the image is still one row for every prompt
        to_image = shared_token_to_image if shared else token_to_image
        to_token = shared_image_to_token_update if shared else image_to_token_update
        attn = block.cross_attn_token_to_image
        queries = block.norm2(queries + to_image(attn, queries + tokens, keys, keyed))
        queries = block.norm3(queries + block.mlp(queries))
        attn = block.cross_attn_image_to_token
        keys = to_token(attn, block.norm4, keys, keyed, queries + tokens, queries)
    keyed = keys + image_pe
    if needed is not None:
        queries, tokens = queries[:, needed], tokens[:, needed]
    final = token_to_image(model.final_attn_token_to_image, queries + tokens, keys, keyed)
    return model.norm_final_attn(queries + final), keys


def hypernetwork_weights(decoder: Any, mask_queries: Tensor, outputs: range) -> Tensor:
    """Each wanted mask token through its hypernetwork MLP: (b, len(outputs), c_up), the
    weights that turn the upscaled features into that mask's logits.

    Args:
        decoder: the ``MaskDecoder``.
        mask_queries: (b, len(outputs), c) the final queries of the mask tokens ``outputs``.
        outputs: which mask tokens (0: single mask, 1-3: multimask).
    """
    mlps = decoder.output_hypernetworks_mlps
    return torch.stack([mlps[i](mask_queries[:, k]) for k, i in enumerate(outputs)], dim=1)


def subpixel_weight(conv: Any) -> tuple[Tensor, Tensor]:
    """A 2×2, stride-2 transposed convolution as a matrix (in, 4 · out) whose columns are
    (sub-pixel a·2 + c, out channel), and its bias repeated to match."""
    w = conv.weight  # (in, out, 2, 2)
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), conv.bias.repeat(4)


def token_order_heads(
    decoder: Any,
    mask_queries: Tensor,
    keys: Tensor,
    shape: torch.Size,
    high_res: list[Tensor],
    outputs: range,
) -> Tensor:
    """``shared_heads`` with the image kept in token order: each transposed convolution is
    one matrix product giving every pixel's 2×2 children side by side, the high-resolution
    features and the LayerNorm taken in that order, and pixels put in place only on the final
    logits (``outputs``: the mask tokens wanted, as ``shared_heads``)."""
    _, c, h, w = shape
    b = mask_queries.shape[0]
    dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
    w1, b1 = subpixel_weight(dc1)
    w2, b2 = subpixel_weight(dc2)
    c1, c2 = dc1.out_channels, dc2.out_channels
    # Each product's bias and high-resolution features added in one in-place pass (an
    # addmm would first copy its bias into every row of the output).
    bias1, bias2 = b1.view(1, 1, 4, c1), b2.view(1, 1, 1, 4, c2)
    if decoder.use_high_res_features:
        feat_s0, feat_s1 = high_res
        f1 = feat_s1.view(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(1, h * w, 4, c1)
        f0 = feat_s0.view(c2, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0)
        bias1, bias2 = f1 + bias1, f0.reshape(1, h * w, 4, 4, c2) + bias2
    up = (keys.reshape(-1, c) @ w1).view(b, h * w, 4, c1).add_(bias1)  # (b, hw, s1, c1)
    up = act1(F.layer_norm(up, (c1,), ln1.weight, ln1.bias, ln1.eps))
    up = (up.view(-1, c1) @ w2).view(b, h * w, 4, 4, c2).add_(bias2)  # (b, hw, s1, s2, c2)
    up = act2(up)
    hyper_in = hypernetwork_weights(decoder, mask_queries, outputs)  # (b, m, c2)
    m = hyper_in.shape[1]
    logits = up.view(b, h * w * 16, c2) @ hyper_in.transpose(1, 2)  # (b, hw·16, m)
    # (b, i, j, a1, c1', a2, c2', m) → (b, m, i, a1, a2, j, c1', c2')
    logits = logits.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return logits.reshape(b, m, 4 * h, 4 * w)


# Each method's transformer and upscaling (see the module docstring).
METHODS = {
    "reassociated": (reassociated_transformer, token_order_heads),
    "shared": (transformer, shared_heads),
}
