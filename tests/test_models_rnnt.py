"""The RNN-T loss: the batched anti-diagonal implementation against the textbook recursion and
against brute-force enumeration of every alignment."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from simulforge.models.rnnt_loss import rnnt_loss, rnnt_loss_reference


def _brute_force(logits: torch.Tensor, y: list[int], T: int, blank: int = 0, earliest: list[int] | None = None,
                 latest: list[int] | None = None) -> float:
    """-log of the summed probability of every alignment (T blanks and len(y) labels, ending in blank);
    with bounds, only those emitting label u at a frame earliest[u] <= t <= latest[u]."""
    lp = logits.double().log_softmax(-1)
    U, total = len(y), []
    for labels_at in itertools.combinations(range(T - 1 + U), U):  # positions of labels among the first moves
        t = u = 0
        score = 0.0
        for move in range(T - 1 + U):
            if move in labels_at:
                if (earliest is not None and t < earliest[u]) or (latest is not None and t > latest[u]):
                    score = -math.inf
                score += lp[t, u, y[u]].item()
                u += 1
            else:
                score += lp[t, u, blank].item()
                t += 1
        total.append(score + lp[T - 1, U, blank].item())
    return -torch.logsumexp(torch.tensor(total, dtype=torch.float64), 0).item()


@pytest.mark.parametrize("seed", [0, 1])
def test_rnnt_loss_matches_the_reference_in_value_and_gradient(seed):
    torch.manual_seed(seed)
    B, T, U, V = 4, 7, 5, 6
    logits = torch.randn(B, T, U + 1, V, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, V, (B, U))
    T_len, U_len = torch.tensor([7, 5, 1, 3]), torch.tensor([5, 2, 3, 0])
    fast = rnnt_loss(logits, targets, T_len, U_len, reduction="none")
    ref = rnnt_loss_reference(logits, targets, T_len, U_len)
    assert torch.allclose(fast, ref, atol=1e-10)
    g_fast, = torch.autograd.grad(fast.sum(), logits)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g_fast, g_ref, atol=1e-10)
    assert torch.allclose(rnnt_loss(logits, targets, T_len, U_len), ref.mean())


def test_rnnt_loss_is_the_sum_over_all_alignments():
    torch.manual_seed(3)
    T, y, V = 4, [2, 1, 3], 5
    logits = torch.randn(1, T, len(y) + 1, V, dtype=torch.float64)
    loss = rnnt_loss(logits, torch.tensor([y]), torch.tensor([T]), torch.tensor([len(y)]), reduction="none")
    assert loss.item() == pytest.approx(_brute_force(logits[0], y, T), abs=1e-9)


def test_rnnt_loss_in_float32_matches_the_float64_reference_and_refuses_empty_inputs():
    torch.manual_seed(4)
    B, T, U, V = 4, 7, 5, 6
    logits = torch.randn(B, T, U + 1, V, requires_grad=True)
    targets = torch.randint(1, V, (B, U))
    T_len, U_len = torch.tensor([7, 5, 1, 3]), torch.tensor([5, 2, 3, 0])
    loss = rnnt_loss(logits, targets, T_len, U_len, reduction="none")
    grad, = torch.autograd.grad(loss.sum(), logits)
    assert loss.dtype == grad.dtype == torch.float32
    exact = logits.detach().double().requires_grad_()
    ref = rnnt_loss_reference(exact, targets, T_len, U_len)
    ref_grad, = torch.autograd.grad(ref.sum(), exact)
    # Tolerances: float32 rounds each of the T + U - 1 <= 11 log-add steps of a path sum to eps = 1.2e-7,
    # so the loss (5-20 nats here) is within ~11 eps = 1.3e-6 relative (seen: 1.3e-7 over 20 seeds). A
    # gradient entry lies in [-1, 1] and is exp(alpha + beta - log P) of sums rounded that way: within
    # ~20 nats x 11 eps = 3e-5 absolute (seen: 4e-6). float16 log-probs miss both (1e-4, 5e-4).
    assert torch.allclose(loss.double(), ref, rtol=1.5e-6, atol=0)
    assert torch.allclose(grad.double(), ref_grad, rtol=0, atol=3e-5)
    with pytest.raises(ValueError, match="at least one frame"):
        rnnt_loss(logits[:2, :3, :3], torch.tensor([[1, 2], [3, 0]]), torch.tensor([3, 0]), torch.tensor([2, 1]))


def test_restricted_rnnt_loss_sums_only_the_alignments_that_emit_no_label_before_its_frame():
    torch.manual_seed(5)
    T, y, V = 5, [2, 1, 3], 5
    logits = torch.randn(1, T, len(y) + 1, V, dtype=torch.float64)
    args = torch.tensor([y]), torch.tensor([T]), torch.tensor([len(y)])
    # 9: beyond the last frame, clamped to it; a last frame before the first is the first
    for earliest, latest in (([0, 0, 0], None), ([1, 3, 2], None), ([4, 4, 4], None), ([0, 2, 9], None),
                             ([0, 1, 1], [1, 2, 4]), ([2, 2, 2], [2, 2, 2]), ([1, 3, 9], [0, 3, 9])):
        loss = rnnt_loss(logits, *args, reduction="none", earliest=torch.tensor([earliest]),
                         latest=None if latest is None else torch.tensor([latest]))
        first = [min(e, T - 1) for e in earliest]
        last = None if latest is None else [min(max(x, f), T - 1) for x, f in zip(latest, first, strict=True)]
        expected = _brute_force(logits[0], y, T, earliest=first, latest=last)
        assert loss.item() == pytest.approx(expected, abs=1e-9), (earliest, latest)
    free = rnnt_loss(logits, *args, reduction="none")
    assert rnnt_loss(logits, *args, reduction="none", earliest=torch.tensor([[1, 3, 2]])).item() > free.item()


def test_restricted_rnnt_loss_matches_the_reference_in_value_and_gradient():
    torch.manual_seed(6)
    B, T, U, V = 4, 7, 5, 6
    logits = torch.randn(B, T, U + 1, V, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, V, (B, U))
    T_len, U_len = torch.tensor([7, 5, 1, 3]), torch.tensor([5, 2, 3, 0])
    earliest = torch.randint(0, 8, (B, U)).sort(dim=1).values
    latest = earliest + torch.randint(0, 3, (B, U))
    fast = rnnt_loss(logits, targets, T_len, U_len, reduction="none", earliest=earliest, latest=latest)
    ref = rnnt_loss_reference(logits, targets, T_len, U_len, earliest=earliest, latest=latest)
    assert torch.isfinite(fast).all() and torch.allclose(fast, ref, atol=1e-10)
    g_fast, = torch.autograd.grad(fast.sum(), logits)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g_fast, g_ref, atol=1e-10)
    # where a label may not be emitted yet, training only pushes it down (through the softmax: blank must win)
    b, u = 0, 4
    assert earliest[b, u] > 0
    assert (g_fast[b, : int(earliest[b, u]), u, targets[b, u]] >= 0).all()


def _brute_force_modified(logits, y, T, earliest, latest, blank=0) -> float:
    """-log of the summed probability of every one-symbol-per-frame alignment: T frames, each emitting blank
    or the next label, len(y) labels in all, label u at a frame in [earliest[u], latest[u]]."""
    lp = logits.double().log_softmax(-1)
    total = []
    for frames in itertools.combinations(range(T), len(y)):  # the frame of each label
        if any(not earliest[u] <= t <= latest[u] for u, t in enumerate(frames)):
            continue
        u, score = 0, 0.0
        for t in range(T):
            if u < len(y) and frames[u] == t:
                score += lp[t, u, y[u]].item()
                u += 1
            else:
                score += lp[t, u, blank].item()
        total.append(score)
    return -torch.logsumexp(torch.tensor(total, dtype=torch.float64), 0).item()


def test_the_modified_topology_sums_the_one_symbol_per_frame_alignments_inside_their_windows():
    torch.manual_seed(7)
    T, y, V = 6, [2, 1, 3], 5
    logits = torch.randn(1, T, len(y) + 1, V, dtype=torch.float64, requires_grad=True)
    args = torch.tensor([y]), torch.tensor([T]), torch.tensor([len(y)])
    loss = rnnt_loss(logits, *args, reduction="none", topology="modified")
    assert loss.item() == pytest.approx(_brute_force_modified(logits[0], y, T, [0] * 3, [T - 1] * 3), abs=1e-9)
    for earliest, latest in (([0, 2, 2], [1, 3, 5]), ([1, 1, 1], [1, 2, 3]), ([3, 3, 3], [5, 5, 5])):
        loss = rnnt_loss(logits, *args, reduction="none", topology="modified", earliest=torch.tensor([earliest]),
                         latest=torch.tensor([latest]))
        assert loss.item() == pytest.approx(_brute_force_modified(logits[0], y, T, earliest, latest), abs=1e-9)
    # a window too narrow for one label per frame is widened to the earliest schedule that fits: 1, 2, 3
    narrow = rnnt_loss(logits, *args, reduction="none", topology="modified", earliest=torch.tensor([[1, 1, 1]]),
                       latest=torch.tensor([[1, 1, 1]]))
    assert narrow.item() == pytest.approx(_brute_force_modified(logits[0], y, T, [1, 1, 1], [1, 2, 3]), abs=1e-9)
    grad, = torch.autograd.grad(narrow.sum(), logits)
    assert torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="one label per frame"):
        rnnt_loss(logits[:, :2], *args[:1], torch.tensor([2]), args[2], topology="modified")


def test_the_modified_topology_takes_a_batch_of_unequal_lengths():
    torch.manual_seed(8)
    B, T, U, V = 3, 7, 4, 6
    logits = torch.randn(B, T, U + 1, V, dtype=torch.float64)
    targets = torch.randint(1, V, (B, U))
    T_len, U_len = torch.tensor([7, 5, 3]), torch.tensor([4, 2, 0])
    batch = rnnt_loss(logits, targets, T_len, U_len, reduction="none", topology="modified")
    for b in range(B):
        T_b, U_b = int(T_len[b]), int(U_len[b])
        alone = _brute_force_modified(logits[b, :T_b, : U_b + 1], targets[b, :U_b].tolist(), T_b, [0] * U_b,
                                      [T_b - 1] * U_b)
        assert batch[b].item() == pytest.approx(alone, abs=1e-9), b
