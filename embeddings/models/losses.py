"""Next-item losses over real (non-padding) positions.

``full_softmax_ce`` is cross-entropy over every available item, computed in row chunks with
the gradient worked out in the forward pass (softmax minus one-hot), so the (positions x items)
logit matrix never exists whole and is read only twice. On a 2-core CPU this is most of an
epoch's cost; doing it this way roughly halves it. ``sampled_softmax_ce`` uses shared uniform
negatives, for catalogues too large for the full softmax. ``logq_softmax_ce`` uses the batch's own
targets plus uniform draws as candidates and subtracts from each candidate's logit the log of the
probability that the sampling proposes it (the logQ correction of Yi et al., RecSys 2019: in-batch
candidates are drawn by popularity, and without it popular items are pushed down too hard), through the
same fused softmax with the correction as a bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# rows (positions) and candidate items go through the matmuls padded to a multiple of this: the number of real
# positions changes every step, and in bfloat16 on CPUs with AMX each new matmul shape costs a kernel build
ROWS = 64
# a chunk of the full softmax: as many rows as keep its logits within this many entries (~6 MB in bfloat16). Intel VM
# with AMX, 2 cores, 25,600 positions (bench/epoch_profile.py's loss): over 3,416 items 896 rows 91 ms against 512
# rows 97 ms; over 1,000 items 3,136 rows against 512: 27 ms against 38; past ~4 M entries every size falls off a
# cliff (twice the time at 1,536 rows over 3,416 items)
CHUNK_LOGITS = 3 << 20


def chunk_rows(n_items: int) -> int:
    """Rows of a full-softmax chunk over ``n_items`` candidates: a multiple of :data:`ROWS` (at least one) whose
    logits fit :data:`CHUNK_LOGITS`."""
    return max(ROWS, CHUNK_LOGITS // max(n_items, 1) // ROWS * ROWS)


def _padded(x: torch.Tensor, value: float = 0) -> torch.Tensor:
    """``x`` with rows appended (``value``) up to a multiple of :data:`ROWS`."""
    pad = -len(x) % ROWS
    return F.pad(x, (0, 0) * (x.dim() - 1) + (0, pad), value=value) if pad else x


class _FullSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, vectors, targets, bias, low_precision: bool, chunk: int | None):
        n = len(targets)
        chunk = chunk or chunk_rows(len(vectors))
        dtype = torch.bfloat16 if low_precision else torch.float32
        h, e = _padded(hidden.to(dtype)), vectors.to(dtype)  # zero rows: no gradient to the items
        bias = None if bias is None else bias.to(dtype)
        want_e = ctx.needs_input_grad[1]
        device = hidden.device
        grad_h = torch.empty(n, h.shape[1], dtype=torch.float32, device=device)
        grad_e = torch.zeros(e.shape, dtype=torch.float32, device=device) if want_e else None
        total = torch.zeros((), dtype=torch.float64, device=device)
        tiny = torch.finfo(torch.float32).tiny
        for start in range(0, n, chunk):
            hc, yc = h[start : start + chunk], targets[start : start + chunk]
            rows = torch.arange(len(yc), device=device)
            logits = hc @ e.T if bias is None else torch.addmm(bias, hc, e.T)  # the bias added in the matmul
            # one fused pass (max, exp, sum, divide in float, written in ``dtype``) gives the probabilities:
            # the loss is -log p(target), the gradient softmax minus one-hot
            probs = torch.softmax(logits, dim=1)
            total -= probs[rows, yc].float().clamp_min(tiny).log().sum().double()
            probs[rows, yc] -= 1.0
            grad_h[start : start + chunk] = (probs @ e)[: len(yc)].float()
            if want_e:
                grad_e += (probs.T @ hc).float()
        grad_h /= n
        if want_e:
            grad_e /= n
        ctx.save_for_backward(grad_h, grad_e if want_e else torch.empty(0))
        ctx.want_e = want_e
        return (total / n).float()

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_e = ctx.saved_tensors
        return grad_h * grad_out, (grad_e * grad_out if ctx.want_e else None), None, None, None, None


def full_softmax_ce(
    hidden: torch.Tensor,
    vectors: torch.Tensor,
    targets: torch.Tensor,
    unavailable: torch.Tensor | None = None,
    low_precision: bool = False,
    chunk: int | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` (item indices) given hidden states (P, d) and item vectors (n, d), over
    ``chunk`` rows at a time (None: :func:`chunk_rows`).

    ``unavailable`` (n,) bool masks items out of the softmax (e.g. listings not yet published); ``bias`` (n,) is
    added to every row's logits (no gradient).
    """
    if unavailable is not None:
        bias = torch.zeros(len(vectors), device=vectors.device) if bias is None else bias.float()
        bias = bias.masked_fill(unavailable, float("-inf"))
    return _FullSoftmaxCE.apply(hidden, vectors, targets, bias, low_precision, chunk)


def sampled_softmax_ce(
    hidden: torch.Tensor, vectors: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of the target against shared ``negatives`` (item indices); a collision is masked."""
    pos = (hidden * vectors[targets]).sum(-1, keepdim=True)
    neg = (_padded(hidden) @ vectors[negatives].T)[: len(targets)]
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos, neg], dim=1).float()
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device))


def logq_softmax_ce(
    hidden: torch.Tensor,
    vectors: torch.Tensor,
    targets: torch.Tensor,
    extra: torch.Tensor,
    log_q: torch.Tensor,
    low_precision: bool = False,
) -> torch.Tensor:
    """Cross-entropy over the candidate set {batch targets} U {``extra`` items}, each candidate's logit minus
    ``log_q[item]``: the log of the probability that the sampling proposes it (see :func:`log_inclusion`).
    Each item is a candidate once, so no accidental hit needs masking. Computed by the fused softmax of
    :func:`full_softmax_ce` over the candidates, with ``-log_q`` as its bias."""
    candidates, where = torch.unique(torch.cat([targets, extra]), return_inverse=True)
    shift = _padded(-log_q[candidates].float(), float("-inf"))  # padding candidates: never chosen
    chosen = vectors[_padded(candidates)]
    return full_softmax_ce(hidden, chosen, where[: len(targets)], low_precision=low_precision, bias=shift)


def log_inclusion(popularity: torch.Tensor, positions: int, n_uniform: int, available: torch.Tensor) -> torch.Tensor:
    """log P(item i is a candidate) when a batch holds ``positions`` targets drawn by ``popularity`` (counts over
    the training targets) and ``n_uniform`` draws uniform over the ``available`` items:
    log(1 - (1 - p_i)^positions (1 - u_i)^n_uniform).

    Candidates are kept once each, so this is what the sampling adds to an item's logit (as TensorFlow's
    samplers report for unique draws). The expected number of draws, positions * p_i + n_uniform * u_i, agrees
    for rare items but grows without bound for a popular one in a large batch (ML-1M: a batch's targets cover
    most of the catalogue), which would push popular items far down."""
    p = (popularity.double() / popularity.sum().clamp_min(1)).clamp_max(1 - 1e-12)
    u = (available.double() / available.sum().clamp_min(1)).clamp_max(1 - 1e-12)
    log_miss = positions * torch.log1p(-p) + n_uniform * torch.log1p(-u)
    return torch.log(-torch.expm1(log_miss)).clamp_min(-1e4).float()
