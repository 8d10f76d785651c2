"""Token packing: a BERT-family encoder's forward pass on the real tokens only.

A batch of sentences is padded to its longest one; on rt-polarity a random batch of 16 holds
about 1.8x its real tokens.  Every dense layer of a transformer (the query/key/value and output
projections, the feed-forward block, the layer norms) acts on each token alone, so it can run on
the ``(N, H)`` matrix of the batch's ``N`` real tokens instead of the ``(B, T, H)`` padded block.
Only attention mixes tokens: the packed queries, keys and values are scattered back to padded
blocks of examples of similar length (:func:`length_blocks`), one
``scaled_dot_product_attention`` call with the padding mask per block, and the output is
gathered back to the real tokens.  The arithmetic on real tokens is the same as the padded
forward's (equal up to float rounding; a test checks logits and gradients against Hugging
Face's forward).  Dropout draws its masks on the real tokens only, with :func:`dropout`'s cheaper
generator (the rate rounded to a multiple of 1/32768).

:func:`supports_packing` says whether a model has the layout this path knows (Hugging Face's
BERT modules, ``BertEmbeddings`` included, with absolute positions, no decoder, no
cross-attention: BertModel and the MiniLM checkpoints built on it; RoBERTa, whose embeddings
offset positions by the padding index, is not one); anything else runs the model's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["length_blocks", "supports_packing", "packed_hidden_states", "dropout"]

_LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "attention.output.LayerNorm", "attention.output.dropout", "intermediate.dense",
                "intermediate.intermediate_act_fn", "output.dense", "output.LayerNorm", "output.dropout")


def _encoder_layers(base: nn.Module) -> nn.ModuleList | None:
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def supports_packing(base: nn.Module) -> bool:
    """Whether :func:`packed_hidden_states` can run ``base`` (a Hugging Face base model such as
    ``BertModel``): BERT-style embeddings and encoder blocks, an encoder-only model with absolute
    position embeddings."""
    config = getattr(base, "config", None)
    layers = _encoder_layers(base)
    emb = getattr(base, "embeddings", None)
    if config is None or layers is None or emb is None or len(layers) == 0:
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    if type(emb).__name__ != "BertEmbeddings":  # RoBERTa's offsets positions by its padding index
        return False
    for layer in layers:
        for part in _LAYER_PARTS:
            try:
                layer.get_submodule(part)
            except AttributeError:
                return False
        if getattr(layer, "chunk_size_feed_forward", 0):
            return False
    return True


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout as :func:`torch.nn.functional.dropout` computes it, with a cheaper mask.

    Each element is zeroed with probability ``p'``, ``p`` rounded to a multiple of 1/32768
    (0.1 becomes 0.100006), and the survivors are scaled by ``1 / (1 - p')``.  The mask comes from
    one 31-bit random integer per two elements (two 15-bit fields) of torch's default generator,
    so seeding torch seeds it; on one CPU core this is about 2.7x faster than PyTorch's
    ``bernoulli_`` mask (``perf/text_step_speed.py``).  ``p <= 0`` or ``training=False`` returns
    ``x``; ``p >= 1`` returns zeros.
    """
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    threshold = round(float(p) * 32768)
    if threshold == 0:
        return x
    n = x.numel()
    half = (n + 1) // 2
    bits = torch.empty(half, dtype=torch.int32, device=x.device).random_()  # uniform on [0, 2**31)
    keep = torch.empty(2 * half, dtype=x.dtype, device=x.device)
    torch.ge(bits & 0x7FFF, threshold, out=keep[:half])
    torch.ge(bits >> 16, threshold, out=keep[half:])
    return x * keep[:n].view(x.shape).mul_(32768.0 / (32768 - threshold))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, p: float,
               scale: float | None) -> torch.Tensor:
    """Scaled dot-product attention with a boolean ``mask`` (True: attend) and dropout ``p`` on
    the attention probabilities (:func:`dropout`'s mask); without dropout, PyTorch's fused kernel."""
    if p <= 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale).masked_fill_(~mask, float("-inf"))
    return torch.matmul(dropout(torch.softmax(scores, dim=-1), p), v)


def _scatter(rows: torch.Tensor, index: torch.Tensor, total: int) -> torch.Tensor:
    """``(N, D)`` rows placed at ``index`` of a zero ``(total, D)`` matrix (differentiable)."""
    return rows.new_zeros(total, rows.shape[-1]).index_copy(0, index, rows)


def length_blocks(lengths: torch.Tensor, blocks: int = 4) -> list[tuple[torch.Tensor, int]]:
    """Examples cut into at most ``blocks`` runs of similar length: ``(indices, longest length)``
    of each run, longest examples first.  Work that pads every example to the batch's longest
    (attention, token Gram matrices) costs about half as much on such runs of a random batch.

    Args:
        lengths: ``(B,)`` real tokens of each example.
        blocks: how many runs (at most one per example).
    """
    order = torch.argsort(lengths, descending=True, stable=True)
    size = -(-len(order) // max(1, min(int(blocks), len(order))))
    return [(order[first: first + size], int(lengths[order[first]])) for first in range(0, len(order), size)]


def packed_hidden_states(base: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         token_type_ids: torch.Tensor | None = None, groups: int = 4) -> list[torch.Tensor]:
    """The hidden states of ``base`` (embeddings, then each layer's output) as Hugging Face's
    ``output_hidden_states`` gives them, each ``(B, T, H)``, computed on the real tokens only.

    The real tokens are held as one ``(N, H)`` matrix, examples in order of length.  Attention runs
    on ``groups`` blocks of examples of similar length, each padded to its own longest example
    (a random batch of 16 padded as one block holds about twice the query-key pairs).
    Padding positions of the returned states are 0 (Hugging Face's hold values computed from
    padding, which masked losses and mean pooling ignore).

    Args:
        base: a model :func:`supports_packing` accepts, in train or eval mode.
        input_ids, attention_mask: ``(B, T)``; the mask is 1 on real tokens, a prefix of each row.
        token_type_ids: ``(B, T)`` or ``None`` (all zero).
        groups: how many length blocks attention runs on (at most one per example).
    """
    b, t = input_ids.shape
    device = input_ids.device
    lengths = attention_mask.sum(1)
    order = torch.cat([members for members, _ in length_blocks(lengths, groups)])  # longest first
    lengths_sorted = lengths[order]
    # row r of the packed matrix: example order[e], position p < its length
    positions_in_row = torch.arange(t, device=device).expand(b, t)
    real = positions_in_row < lengths_sorted[:, None]
    example_of_row = order[:, None].expand(b, t)[real]
    position_of_row = positions_in_row[real]
    flat = example_of_row * t + position_of_row  # where each row sits in the (B*T) padded layout
    emb = base.embeddings
    types = (torch.zeros_like(position_of_row) if token_type_ids is None else token_type_ids.reshape(-1)[flat])
    x = emb.word_embeddings(input_ids.reshape(-1)[flat])
    x = x + emb.token_type_embeddings(types) + emb.position_embeddings(position_of_row)
    x = dropout(emb.LayerNorm(x), emb.dropout.p, emb.training)
    hidden = [x]
    blocks = []  # each length block: its rows of the packed matrix and their places in its padded layout
    row = 0
    for members, width in length_blocks(lengths, groups):
        n_ex = len(members)
        block_lengths = lengths[members]
        rows = int(block_lengths.sum())
        local = (torch.arange(n_ex, device=device).repeat_interleave(block_lengths) * width
                 + position_of_row[row: row + rows])
        mask = (torch.arange(width, device=device)[None, :] < block_lengths[:, None])[:, None, None, :]
        blocks.append((row, row + rows, n_ex, width, local, mask))
        row += rows
    for layer in _encoder_layers(base):
        attn = layer.attention.self
        heads, size_h = attn.num_attention_heads, attn.attention_head_size
        q, k, v = attn.query(x), attn.key(x), attn.value(x)
        p = attn.dropout.p if attn.training else 0.0
        context = []
        for start, stop, n_ex, width, local, mask in blocks:
            qkv = [_scatter(z[start:stop], local, n_ex * width).view(n_ex, width, heads, size_h).transpose(1, 2)
                   for z in (q, k, v)]
            out = _attention(*qkv, mask, p, getattr(attn, "scaling", None))  # type: ignore[call-arg]  # qkv holds q, k, v
            context.append(out.transpose(1, 2).reshape(n_ex * width, heads * size_h)[local])
        context = context[0] if len(context) == 1 else torch.cat(context)  # type: ignore[assignment]  # the blocks, joined
        out = layer.attention.output  # type: ignore[assignment]
        x = out.LayerNorm(dropout(out.dense(context), out.dropout.p, out.training) + x)
        ffn = layer.output
        inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
        x = ffn.LayerNorm(dropout(ffn.dense(inner), ffn.dropout.p, ffn.training) + x)
        hidden.append(x)
    return [_scatter(h, flat, b * t).view(b, t, -1) for h in hidden]
