"""The RNN-T loss: the batched anti-diagonal implementation against the textbook recursion and
against brute-force enumeration of every alignment."""

from __future__ import annotations

import itertools

import pytest
import torch

from simulforge.models.rnnt_loss import rnnt_loss, rnnt_loss_reference


def _brute_force(logits: torch.Tensor, y: list[int], T: int, blank: int = 0) -> float:
    """-log of the summed probability of every alignment (T blanks and len(y) labels, ending in blank)."""
    lp = logits.double().log_softmax(-1)
    U, total = len(y), []
    for labels_at in itertools.combinations(range(T - 1 + U), U):  # positions of labels among the first moves
        t = u = 0
        score = 0.0
        for move in range(T - 1 + U):
            if move in labels_at:
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
