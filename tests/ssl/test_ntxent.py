"""NT-Xent against an independent loop implementation and closed-form cases (Chen et al. 2020)."""

from __future__ import annotations

import math

import pytest
import torch

from fedecho.ssl.ntxent import NTXentLoss, nt_xent_loss, paired_positive_index


def reference_nt_xent(z: torch.Tensor, positives: list[int], tau: float, groups: list[int] | None = None) -> float:
    """Straightforward loop: for each anchor, -log softmax over the other items at the positive."""
    z = z.double()
    z = z / z.norm(dim=1, keepdim=True)
    m = z.shape[0]
    total = 0.0
    for i in range(m):
        others = [
            j for j in range(m)
            if j != i and (groups is None or groups[j] != groups[i] or j == positives[i])
        ]
        logits = {j: float(z[i] @ z[j]) / tau for j in others}
        log_denominator = math.log(sum(math.exp(v) for v in logits.values()))
        total += -(logits[positives[i]] - log_denominator)
    return total / m


@pytest.mark.parametrize("tau", [0.5, 0.05])
def test_standard_layout_equals_loop(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    loss = NTXentLoss(tau)(a, b)
    expected = reference_nt_xent(torch.cat([a, b]), [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5], tau)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_closed_form_aligned_pairs_orthogonal_negatives() -> None:
    # z_a[i] = z_b[i] = e_i: positive cosine 1, every negative cosine 0
    # -> l_i = -1/tau + log(exp(1/tau) + 2N - 2) = log(1 + (2N - 2) exp(-1/tau)).
    n, tau = 4, 0.5
    eye = torch.eye(n, 8)
    loss = NTXentLoss(tau)(eye, 3.0 * eye)  # scale is irrelevant: embeddings are normalised
    assert float(loss) == pytest.approx(math.log(1 + (2 * n - 2) * math.exp(-1 / tau)), rel=1e-6)


def test_temperature_changes_loss_as_expected() -> None:
    n = 4
    eye = torch.eye(n, 8)
    losses = {tau: float(NTXentLoss(tau)(eye, eye)) for tau in (1.0, 0.5, 0.1)}
    for tau, value in losses.items():
        assert value == pytest.approx(math.log(1 + (2 * n - 2) * math.exp(-1 / tau)), rel=1e-5, abs=1e-7)
    # perfectly separable positives: a sharper temperature gives a smaller loss
    assert losses[0.1] < losses[0.5] < losses[1.0]
    # random embeddings: the temperature enters as 1/tau in the logits (checked against the loop)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 3, generator=g)
    for tau in (0.2, 2.0):
        assert float(nt_xent_loss(z, paired_positive_index(4), tau)) == pytest.approx(
            reference_nt_xent(z, [4, 5, 6, 7, 0, 1, 2, 3], tau), rel=1e-5
        )


def test_explicit_positive_index_uses_the_given_pairs() -> None:
    # multi-instance layout: 6 items where the positives are (0,3), (1,5), (2,4), not i <-> i+N
    g = torch.Generator().manual_seed(2)
    z = torch.randn(6, 4, generator=g)
    positives = [3, 5, 4, 0, 2, 1]
    loss = nt_xent_loss(z, torch.tensor(positives), 0.05)
    assert float(loss) == pytest.approx(reference_nt_xent(z, positives, 0.05), rel=1e-5)
    wrong = nt_xent_loss(z, paired_positive_index(3), 0.05)
    assert abs(float(wrong) - float(loss)) > 1e-3


def test_pairing_follows_row_order_of_second_view() -> None:
    # row i of view_b is the positive of row i of view_a: pairing a with a row-shuffled b equals
    # the unshuffled items with an explicit index pointing each anchor at its partner.
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    perm = torch.tensor([2, 0, 4, 1, 3])
    shuffled = NTXentLoss(0.1)(a, b[perm])
    inv = torch.argsort(perm)
    positives = [5 + int(perm[i]) for i in range(5)] + [int(inv[j]) for j in range(5)]
    z = torch.cat([a, b])
    assert float(shuffled) == pytest.approx(reference_nt_xent(z, positives, 0.1), rel=1e-5)
    assert float(nt_xent_loss(z, torch.tensor(positives), 0.1)) == pytest.approx(float(shuffled), rel=1e-5)
    assert float(shuffled) != pytest.approx(float(NTXentLoss(0.1)(a, b)), rel=1e-3)


def test_group_ids_remove_same_group_negatives() -> None:
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    groups = torch.tensor([0, 1, 0, 2])  # items 0 and 2 are videos of one study
    loss = NTXentLoss(0.5)(a, b, groups)
    expected = reference_nt_xent(
        torch.cat([a, b]), [4, 5, 6, 7, 0, 1, 2, 3], 0.5, groups=[0, 1, 0, 2, 0, 1, 0, 2]
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(loss) != pytest.approx(float(NTXentLoss(0.5)(a, b)), rel=1e-3)


def test_gradient_is_finite_even_for_identical_embeddings_and_low_tau() -> None:
    z = torch.ones(6, 4, requires_grad=True)
    loss = nt_xent_loss(z, paired_positive_index(3), 0.05)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    g = torch.Generator().manual_seed(5)
    a = torch.randn(8, 16, generator=g, requires_grad=True)
    b = torch.randn(8, 16, generator=g, requires_grad=True)
    NTXentLoss(0.05)(a, b).backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors() -> None:
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(z, paired_positive_index(2), 0.0)
    with pytest.raises(ValueError, match="differ from their anchor"):
        nt_xent_loss(z, torch.tensor([0, 2, 1, 3]), 0.5)
    with pytest.raises(ValueError, match="equal shape"):
        NTXentLoss()(torch.randn(3, 2), torch.randn(4, 2))
