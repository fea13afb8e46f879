"""SAM 2's mask decoder for many single-point prompts on one image, without repeated work.

sam2's ``MaskDecoder`` copies the image embedding and its positional encoding once per prompt
and then projects every copy. Until the first two-way block's image-to-token attention
updates it, the image side is the same for every prompt (when no mask is given as a prompt),
so here it is computed once: the first block's token-to-image keys and values and its
image-to-token queries, about a quarter of the decoder's arithmetic at 1024 px. Everything
after that is sam2's own modules, called as sam2 calls them.
"""

from __future__ import annotations

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

    Returns:
        Low-resolution logits (n, 4h, 4w) and predicted IoUs (n,) of the kept masks, and each
        one's row in the (b * m) flattening of sam2's (b, m) outputs, in that order.
    """
    tokens = output_tokens(decoder, sparse)
    queries, keys = transformer(decoder.transformer, image_embed + dense[:1], image_pe, tokens)
    first = 1 if decoder.pred_obj_scores else 0
    iou_pred = decoder.iou_prediction_head(queries[:, first, :])
    dynamic = not multimask and decoder.dynamic_multimask_via_stability and not decoder.training
    if dynamic:  # sam2 picks the output by the masks' own stability: every mask is needed
        every = heads(decoder, queries, keys, image_embed.shape, high_res, range(4))
        masks, iou = decoder._dynamic_multimask_via_stability(every, iou_pred)
    else:
        outputs = range(1, 4) if multimask else range(0, 1)
        iou = iou_pred[:, outputs.start : outputs.stop]
    keep = iou > iou_threshold if iou_threshold > 0 else torch.ones_like(iou, dtype=torch.bool)
    if count is not None:
        keep[count:] = False
    prompts = keep.any(dim=1).nonzero()[:, 0]
    if dynamic:
        masks = masks[prompts]
    else:
        masks = heads(
            decoder, queries[prompts], keys[prompts], image_embed.shape, high_res, outputs
        )
    rows = keep.flatten().nonzero()[:, 0]
    return masks[keep[prompts]], iou.flatten()[rows], rows


def output_tokens(decoder: Any, sparse: Tensor) -> Tensor:
    """The learned output tokens followed by each prompt's sparse embeddings: (b, t', c)."""
    learned = [decoder.iou_token.weight, decoder.mask_tokens.weight]
    if decoder.pred_obj_scores:
        learned.insert(0, decoder.obj_score_token.weight)
    out = torch.cat(learned, dim=0).unsqueeze(0).expand(sparse.size(0), -1, -1)
    return torch.cat((out, sparse), dim=1)


def transformer(model: Any, src: Tensor, pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``TwoWayTransformer.forward`` with the first block's image side computed once."""
    image = src.flatten(2).permute(0, 2, 1)  # (1, hw, c)
    image_pe = pe.flatten(2).permute(0, 2, 1)
    queries, keys = first_block(model.layers[0], tokens, image, tokens, image_pe)
    for layer in model.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=image_pe)
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


def heads(
    decoder: Any,
    queries: Tensor,
    keys: Tensor,
    shape: torch.Size,
    high_res: list[Tensor],
    outputs: range,
) -> Tensor:
    """``MaskDecoder.predict_masks`` after the transformer: upscaling and the mask products,
    for the mask tokens in ``outputs`` (0: single mask, 1-3: multimask).

    Returns:
        (b, len(outputs), 4h, 4w) mask logits.
    """
    first = 1 if decoder.pred_obj_scores else 0
    _, c, h, w = shape
    b = queries.shape[0]
    src = keys.transpose(1, 2).reshape(b, c, h, w)
    if decoder.use_high_res_features:
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        feat_s0, feat_s1 = high_res
        upscaled = act1(ln1(dc1(src) + feat_s1))
        upscaled = act2(dc2(upscaled) + feat_s0)
    else:
        upscaled = decoder.output_upscaling(src)
    mask_tokens = queries[:, first + 1 : first + 1 + decoder.num_mask_tokens, :]
    hyper_in = torch.stack(
        [decoder.output_hypernetworks_mlps[i](mask_tokens[:, i, :]) for i in outputs], dim=1
    )
    _, c, h, w = upscaled.shape
    return (hyper_in @ upscaled.view(b, c, h * w)).view(b, len(outputs), h, w)
