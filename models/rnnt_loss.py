"""RNN-T loss in PyTorch (CPU or GPU), and a plain reference to check it against.

The transducer lattice has a node (t, u) for t < T frames and u <= U emitted labels; from a
node the model either emits blank (t+1, u) or the next label (t, u+1). With
blank[t, u] = log P(blank | t, u) and label[t, u] = log P(y_{u+1} | t, u):

    alpha[0, 0] = 0
    alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + label[t, u-1])
    log P(y | x) = alpha[T-1, U] + blank[T-1, U]

`rnnt_loss` gathers the two log-prob tensors (B, T, U+1) from the joiner's logits, then runs
the forward (alpha) and backward (beta) recursions one anti-diagonal t + u = n at a time,
every sequence of the batch and every node of the diagonal at once, and writes the gradient
directly: d(-log P)/d blank[t, u] = -exp(alpha[t, u] + blank[t, u] + beta[t+1, u] - log P),
and likewise for labels. Autograd carries it back through log_softmax to the logits.

Optional `earliest` and `latest` (B, U) restrict the lattice (alignment-restricted RNN-T, Mahadeokar
et al. 2021): label u may be emitted only at a frame earliest[b, u] <= t <= latest[b, u], e.g. not before
the word it spells has been heard, so a model cannot learn to say what it has not heard yet from
memory, and not long after, so it cannot learn to put it off.

With topology "modified" (k2's rnnt_type "modified") a frame emits exactly one symbol, blank or a
label, and a label moves on to the next frame too: (t, u) -> (t+1, u) or (t+1, u+1), log P =
alpha[T, U]. That is the lattice a beam search of one symbol per frame walks (transducer.py), so a
model trained on it is not asked to put several labels on one frame that its decoder cannot. It needs
T >= U. Its bounds are widened where one frame per label would not fit in them (`_modified_bounds`).

`rnnt_loss_reference` is the textbook double loop with autograd, for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _gather(logits: Tensor, targets: Tensor, blank: int) -> tuple[Tensor, Tensor]:
    """logits (B, T, U+1, V), targets (B, U) -> blank (B, T, U+1) and label (B, T, U) log-probs."""
    log_probs = (logits if logits.dtype == torch.float64 else logits.float()).log_softmax(dim=-1)
    blank_lp = log_probs[..., blank]
    if targets.shape[1] == 0:
        return blank_lp, log_probs.new_zeros(log_probs.shape[0], log_probs.shape[1], 0)
    index = targets[:, None, :, None].expand(-1, log_probs.shape[1], -1, 1)
    label_lp = log_probs[:, :, :-1].gather(-1, index).squeeze(-1)
    return blank_lp, label_lp


def _diagonal(n: int, T: int, U1: int, device) -> tuple[Tensor, Tensor]:
    """Node coordinates (t, u) of anti-diagonal t + u = n inside a T x U1 grid."""
    t = torch.arange(max(0, n - U1 + 1), min(n, T - 1) + 1, device=device)
    return t, n - t


def _alphas(blank: Tensor, label: Tensor) -> Tensor:
    B, T, U1 = blank.shape
    neg = torch.finfo(blank.dtype).min / 4  # log(0) that stays finite under additions
    alpha = blank.new_full((B, T, U1), neg)
    alpha[:, 0, 0] = 0.0
    for n in range(1, T + U1 - 1):
        t, u = _diagonal(n, T, U1, blank.device)
        from_blank = torch.where(t > 0, alpha[:, (t - 1).clamp_min(0), u] + blank[:, (t - 1).clamp_min(0), u], neg)
        if U1 > 1:
            um = (u - 1).clamp_min(0)
            from_label = torch.where(u > 0, alpha[:, t, um] + label[:, t, um.clamp_max(U1 - 2)], neg)
        else:
            from_label = torch.full_like(from_blank, neg)
        alpha[:, t, u] = torch.logaddexp(from_blank, from_label)
    return alpha


def _betas(blank: Tensor, label: Tensor, T_len: Tensor, U_len: Tensor) -> Tensor:
    """beta[t, u] = log P(rest of y | node (t, u)), each sequence ending at its own (T_b - 1, U_b)."""
    B, T, U1 = blank.shape
    neg = torch.finfo(blank.dtype).min / 4
    beta = blank.new_full((B, T + 1, U1 + 1), neg)  # one row/column of log(0) beyond the grid
    label_pad = F.pad(label, (0, 1), value=neg)  # label[t, U] does not exist
    for n in range(T + U1 - 2, -1, -1):
        t, u = _diagonal(n, T, U1, blank.device)
        value = torch.logaddexp(beta[:, t + 1, u] + blank[:, t, u], beta[:, t, u + 1] + label_pad[:, t, u])
        end = (t[None] == (T_len - 1)[:, None]) & (u[None] == U_len[:, None])  # (B, nodes)
        value = torch.where(end, blank[:, t, u], value)
        inside = (t[None] < T_len[:, None]) & (u[None] <= U_len[:, None])
        beta[:, t, u] = torch.where(inside, value, neg)
    return beta


class _RNNTLoss(torch.autograd.Function):
    """(blank, label log-probs, lengths) -> (B,) NLL, with the gradient from alphas and betas."""

    @staticmethod
    def forward(ctx, blank: Tensor, label: Tensor, T_len: Tensor, U_len: Tensor) -> Tensor:
        b = torch.arange(blank.shape[0], device=blank.device)
        alpha = _alphas(blank, label)
        beta = _betas(blank, label, T_len, U_len)
        log_p = alpha[b, T_len - 1, U_len] + blank[b, T_len - 1, U_len]
        ctx.save_for_backward(blank, label, alpha, beta, log_p, T_len, U_len)
        return -log_p

    @staticmethod
    def backward(ctx, grad: Tensor):
        blank, label, alpha, beta, log_p, T_len, U_len = ctx.saved_tensors
        T, U1 = blank.shape[1], blank.shape[2]
        b = torch.arange(blank.shape[0], device=blank.device)
        # Blank moves (t, u) -> (t+1, u); the final blank at (T_b - 1, U_b) ends the path (beta = log 1).
        after_blank = beta[:, 1:T + 1, :U1].clone()
        after_blank[b, T_len - 1, U_len] = 0.0
        scale = grad[:, None, None]
        g_blank = -torch.exp(alpha + blank + after_blank - log_p[:, None, None]) * scale
        g_label = -torch.exp(alpha[:, :, :-1] + label + beta[:, :T, 1:U1] - log_p[:, None, None]) * scale
        return g_blank, g_label, None, None


def _bounds(earliest: Tensor | None, latest: Tensor | None, T_len: Tensor, shape) -> tuple[Tensor, Tensor]:
    """(B, U) first and last frame of each label, clamped into the sequence (a first frame past its end
    becomes the last frame; a last frame before the first becomes the first), so every target stays reachable."""
    last_frame = (T_len - 1)[:, None].expand(shape)
    first = last_frame.new_zeros(shape) if earliest is None else torch.minimum(earliest.long().clamp_min(0), last_frame)
    last = last_frame if latest is None else torch.minimum(torch.maximum(latest.long(), first), last_frame)
    return first, last


def _restrict(label: Tensor, first: Tensor, last: Tensor) -> Tensor:
    """label (B, T, U) log-probs with label u removed (log 0) at frames outside [first, last] (B, U)."""
    frames = torch.arange(label.shape[1], device=label.device)[None, :, None]
    outside = (frames < first[:, None, :]) | (frames > last[:, None, :])  # (B, T, U)
    return label.masked_fill(outside, torch.finfo(label.dtype).min / 4)


TOPOLOGIES = ("standard", "modified")


def _modified_bounds(first: Tensor, last: Tensor, T_len: Tensor, U_len: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds in which one label per frame fits: label u no later than T - U + u (one frame for each
    label after it), and no window narrower than the earliest schedule s_u = max(first_u, s_{u-1} + 1)."""
    u = torch.arange(first.shape[1], device=first.device)[None]
    cap = (T_len - U_len)[:, None] + u
    first = torch.minimum(first, cap)
    schedule, previous = torch.empty_like(first), torch.full_like(first[:, 0], -1)
    for k in range(first.shape[1]):
        previous = schedule[:, k] = torch.maximum(first[:, k], previous + 1)
    return first, torch.minimum(torch.maximum(last, schedule), cap)


def _modified_nll(blank: Tensor, label: Tensor, T_len: Tensor, U_len: Tensor) -> Tensor:
    """-log P over the one-symbol-per-frame lattice, frame by frame (autograd differentiates it). (B,)"""
    B, T, U1 = blank.shape
    neg = torch.finfo(blank.dtype).min / 4
    alpha = blank.new_full((B, U1), neg)
    alpha[:, 0] = 0.0
    final = blank.new_full((B,), neg)
    b = torch.arange(B, device=blank.device)
    for t in range(T):
        stay = alpha + blank[:, t]
        move = torch.cat([blank.new_full((B, 1), neg), alpha[:, :-1] + label[:, t]], dim=1) if U1 > 1 else \
            torch.full_like(stay, neg)
        alpha = torch.logaddexp(stay, move)
        final = torch.where(T_len == t + 1, alpha[b, U_len], final)
    return -final


def rnnt_loss(logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor,
              blank: int = 0, reduction: str = "mean", earliest: Tensor | None = None,
              latest: Tensor | None = None, topology: str = "standard") -> Tensor:
    """RNN-T negative log-likelihood.

    Args:
        logits: (B, T, U+1, V) joiner outputs (unnormalised).
        targets: (B, U) label ids (padding beyond target_lengths is ignored; never `blank`).
        logit_lengths: (B,) valid frames, >= 1; target_lengths: (B,) valid labels.
        blank: the blank id.
        reduction: "mean" (over the batch), "sum" or "none".
        earliest, latest: (B, U) the first and the last frame at which each label may be emitted; None: any.
        topology: "standard" (any number of labels per frame) or "modified" (one symbol per frame).
    Returns:
        scalar, or (B,) with reduction "none".
    """
    T_len, U_len = logit_lengths.long(), target_lengths.long()
    if int(T_len.min()) < 1:
        raise ValueError("every sequence needs at least one frame")
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {topology!r}")
    if topology == "modified" and bool((T_len < U_len).any()):
        raise ValueError(f"the modified topology emits one label per frame: {int(U_len.max())} labels need as many "
                         f"frames, some sequences have fewer ({int((T_len < U_len).sum())} of {len(T_len)})")
    safe_targets = targets.masked_fill(targets < 0, 0)
    blank_lp, label_lp = _gather(logits, safe_targets, blank)
    if label_lp.shape[2] and (earliest is not None or latest is not None or topology == "modified"):
        first, last = _bounds(earliest, latest, T_len, tuple(targets.shape))
        if topology == "modified":
            first, last = _modified_bounds(first, last, T_len, U_len)
        label_lp = _restrict(label_lp, first, last)
    if topology == "modified":
        nll = _modified_nll(blank_lp, label_lp, T_len, U_len)
    else:
        nll = _RNNTLoss.apply(blank_lp, label_lp, T_len, U_len)
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    return nll


def rnnt_loss_reference(logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor,
                        blank: int = 0, earliest: Tensor | None = None, latest: Tensor | None = None) -> Tensor:
    """The textbook recursion, one node at a time, differentiated by autograd. (B,) NLL. With bounds, a
    label step into u at frame t exists only inside its clamped bounds (`_bounds`)."""
    log_probs = (logits if logits.dtype == torch.float64 else logits.float()).log_softmax(dim=-1)
    first, last = _bounds(earliest, latest, logit_lengths.long(), tuple(targets.shape))
    losses = []
    for b in range(logits.shape[0]):
        T, U = int(logit_lengths[b]), int(target_lengths[b])
        y = [int(v) for v in targets[b, :U]]
        alpha = [[None] * (U + 1) for _ in range(T)]
        for t in range(T):
            for u in range(U + 1):
                if t == 0 and u == 0:
                    alpha[t][u] = log_probs.new_zeros(())
                    continue
                terms = []
                if t > 0:
                    terms.append(alpha[t - 1][u] + log_probs[b, t - 1, u, blank])
                if u > 0 and first[b, u - 1] <= t <= last[b, u - 1]:
                    terms.append(alpha[t][u - 1] + log_probs[b, t, u - 1, y[u - 1]])
                if not terms:
                    alpha[t][u] = log_probs.new_tensor(-1e30)
                    continue
                alpha[t][u] = torch.logsumexp(torch.stack(terms), dim=0)
        losses.append(-(alpha[T - 1][U] + log_probs[b, T - 1, U, blank]))
    return torch.stack(losses)
