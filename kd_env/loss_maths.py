"""The maths the knowledge losses share: a mean over real tokens, and FSP matrices (Yim et al.
2017) with their MSE through token Gram matrices (:class:`~kd_env.knowledge.Relation`; the ``H x H``
matrices are never formed).  :mod:`kd_env.knowledge` re-exports these names."""

from __future__ import annotations

import torch

__all__ = ["masked_mean", "fsp_matrix", "fsp_mse", "fsp_mse_chain", "RELATION_BLOCKS"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` (B, T, ...) over real tokens."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - 2)))
    denom = m.sum() * (x[0, 0].numel() if x.dim() > 2 else 1)
    return (x * m).sum() / denom.clamp_min(1)


def fsp_matrix(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Flow-of-solution-procedure matrix (Yim et al. 2017): ``a^T b / n`` over real tokens.

    Args:
        a: ``(B, T, Ha)``; b: ``(B, T, Hb)``; mask: ``(B, T)`` or ``None``.

    Returns:
        ``(B, Ha, Hb)``.
    """
    if mask is not None:
        m = mask.to(a.dtype).unsqueeze(-1)
        a = a * m
        n = m.sum(1, keepdim=True).clamp_min(1)
    else:
        n = torch.tensor(float(a.shape[1]), dtype=a.dtype)
    return torch.bmm(a.transpose(1, 2), b) / n


def fsp_mse(a_s: torch.Tensor, b_s: torch.Tensor, a_t: torch.Tensor, b_t: torch.Tensor,
            mask: torch.Tensor | None) -> torch.Tensor:
    """``mean((fsp(a_s, b_s) - fsp(a_t, b_t))**2)`` without forming the ``H x H`` matrices.

    Uses ``||A_s^T B_s - A_t^T B_t||_F^2 = <A_s A_s^T, B_s B_s^T> - 2 <A_s A_t^T, B_s B_t^T>
    + <A_t A_t^T, B_t B_t^T>`` (token Gram matrices, ``T x T``), which costs ``T^2 H`` instead of
    ``T H^2``: about 10x less for sentences, and a few dot products for MLPs (``T = 1``).
    """
    if mask is not None:
        m = mask.to(a_s.dtype).unsqueeze(-1)
        a_s, b_s, a_t, b_t = a_s * m, b_s * m, a_t * m, b_t * m
        n = m.sum((1, 2)).clamp_min(1)
    else:
        n = torch.full((a_s.shape[0],), float(a_s.shape[1]), dtype=a_s.dtype, device=a_s.device)

    def inner(x1, x2, y1, y2):
        return (torch.bmm(x1, x2.transpose(1, 2)) * torch.bmm(y1, y2.transpose(1, 2))).sum((1, 2))

    sq = inner(a_s, a_s, b_s, b_s) - 2 * inner(a_s, a_t, b_s, b_t) + inner(a_t, a_t, b_t, b_t)
    per_example = sq.clamp_min(0) / (n * n)
    return per_example.mean() / (a_s.shape[-1] * b_s.shape[-1])


#: how many runs of similar length :func:`fsp_mse_chain` forms Gram matrices on (at most one per
#: example; 4 was the fastest of 1, 2, 4, 8, 16 at batch 16 on the demo's shapes)
RELATION_BLOCKS = 4


def fsp_mse_chain(student: list[torch.Tensor], teacher: list[torch.Tensor],
                  mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of :func:`fsp_mse` over the consecutive layer pairs ``(0, 1), (1, 2), ...`` of
    ``student`` and ``teacher`` (lists of ``(B, T, H_j)`` states), with each layer's token Gram
    matrices formed once: an inner layer is in two pairs, so this takes ``3L`` batched products
    for ``L`` layers where pair by pair takes ``6(L-1)``.  With a mask, the Gram matrices are
    formed on runs of examples of similar length, each cut to its longest example
    (:func:`~kd_env.packed.length_blocks`): padding adds only zeros to a Gram matrix, and a
    random batch padded to its longest example holds about 3x the real token pairs.  The values
    are :func:`fsp_mse`'s (the same products, reused; per-example means summed in another order)."""
    from .packed import length_blocks

    b, t = student[0].shape[:2]
    dtype, device = student[0].dtype, student[0].device
    if mask is not None:
        m = mask.to(dtype).unsqueeze(-1)
        student, teacher = [h * m for h in student], [h * m for h in teacher]
        lengths = mask.sum(1)
        blocks = length_blocks(lengths, RELATION_BLOCKS)
        n = torch.cat([lengths[i] for i, _ in blocks]).to(dtype).clamp_min(1)
    else:
        blocks = [(torch.arange(b, device=device), t)]
        n = torch.full((b,), float(t), dtype=dtype, device=device)

    def gram(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, y.transpose(1, 2))

    pairs: list[list[torch.Tensor]] = [[] for _ in range(len(student) - 1)]
    for index, width in blocks:
        s = [h[index, :width] for h in student]
        u = [h[index, :width] for h in teacher]
        ss = [gram(x, x) for x in s]
        st = [gram(x, y) for x, y in zip(s, u)]
        with torch.no_grad():
            tt = [gram(y, y) for y in u]
        for j in range(1, len(student)):
            pairs[j - 1].append((ss[j - 1] * ss[j]).sum((1, 2)) - 2 * (st[j - 1] * st[j]).sum((1, 2))
                                + (tt[j - 1] * tt[j]).sum((1, 2)))
    losses = []
    for j, parts in enumerate(pairs, start=1):
        per_example = torch.cat(parts).clamp_min(0) / (n * n)
        losses.append(per_example.mean() / (student[j - 1].shape[-1] * student[j].shape[-1]))
    return torch.stack(losses).mean()
