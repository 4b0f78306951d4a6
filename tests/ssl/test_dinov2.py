"""DINOv2's losses and masking against reference loops and closed forms: Sinkhorn-Knopp, KoLeo,
iBOT, block masking (fedecho/ssl/dinov2_losses.py, dinov2_masking.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedecho.ssl.dinov2_losses import PatchCentre, cross_view_loss, ibot_patch_loss, koleo_loss, sinkhorn_knopp
from fedecho.ssl.dinov2_masking import block_mask, sample_crop_masks
from fedecho.ssl.dino import DINOLoss


def sinkhorn_loop(logits: list[list[float]], temp: float, iterations: int) -> list[list[float]]:
    """Plain-Python SwAV Sinkhorn-Knopp on Q = exp(t / tau) (K x N), returned as N x K."""
    n, k = len(logits), len(logits[0])
    q = [[math.exp(logits[i][j] / temp) for i in range(n)] for j in range(k)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        q = [[v / sum(row) / k for v in row] for row in q]
        cols = [sum(q[j][i] for j in range(k)) for i in range(n)]
        q = [[q[j][i] / cols[i] / n for i in range(n)] for j in range(k)]
    return [[q[j][i] * n for j in range(k)] for i in range(n)]


def test_sinkhorn_matches_a_loop_and_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5) * 0.3
    out = sinkhorn_knopp(logits, 0.5, iterations=3)
    expected = torch.tensor(sinkhorn_loop(logits.tolist(), 0.5, 3))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(6))  # each sample's target sums to 1


def test_sinkhorn_is_doubly_stochastic_at_convergence_and_stable_at_low_temperature() -> None:
    torch.manual_seed(1)
    logits = torch.randn(8, 4)
    out = sinkhorn_knopp(logits, 1.0, iterations=200)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(8))
    torch.testing.assert_close(out.sum(dim=0), torch.full((4,), 8 / 4))  # equipartition N / K
    cold = sinkhorn_knopp(logits * 100, 0.04, iterations=3)  # exp(2500) would overflow unshifted
    assert torch.isfinite(cold).all()
    torch.testing.assert_close(cold.sum(dim=1), torch.ones(8))
    with pytest.raises(ValueError, match="temperature > 0"):
        sinkhorn_knopp(logits, 0.0)


def test_koleo_on_points_with_known_nearest_neighbour_distances() -> None:
    # 4 unit vectors at 0, 90, 180, 270 degrees: every NN distance is sqrt(2)
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]) * 3.0  # normalised inside
    assert koleo_loss(square).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    # angles 0, 60, 180 degrees: NN distances 2 sin(30) = 1, 1, 2 sin(60) = sqrt(3)
    angles = torch.tensor([0.0, math.pi / 3, math.pi])
    points = torch.stack([angles.cos(), angles.sin()], dim=1)
    expected = -(math.log(1.0) + math.log(1.0) + math.log(math.sqrt(3))) / 3
    assert koleo_loss(points).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="B >= 2"):
        koleo_loss(points[:1])


def test_koleo_gradient_pushes_nearest_neighbours_apart() -> None:
    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.2]], requires_grad=True)
    koleo_loss(points).backward()
    stepped = (points - 0.1 * points.grad).detach()
    assert koleo_loss(stepped) < koleo_loss(points.detach())


def ibot_loop(targets, student, masks, tau):
    """Reference: per image, mean over its masked patches of -sum_k t log softmax(s / tau); then
    the sum over images divided by the number of images (masked or not)."""
    total, row = 0.0, 0
    for image in masks.tolist():
        count = sum(image)
        for flag in image:
            if flag:
                log_probs = torch.log_softmax(student[row] / tau, dim=-1)
                total += float(-(targets[row] * log_probs).sum()) / count
                row += 1
    return total / len(masks)


def test_ibot_loss_equals_hand_loop_on_masked_positions_only() -> None:
    torch.manual_seed(2)
    masks = torch.tensor([[True, False, True, True], [False] * 4, [False, True, False, False]])
    m = int(masks.sum())
    targets = torch.softmax(torch.randn(m, 6), dim=-1)
    student = torch.randn(m, 6)
    loss = ibot_patch_loss(targets, student, masks, 0.1)
    assert loss.item() == pytest.approx(ibot_loop(targets, student, masks, 0.1), rel=1e-6)
    with pytest.raises(ValueError, match="masked count"):
        ibot_patch_loss(targets, student, torch.ones(3, 4, dtype=torch.bool), 0.1)


def test_ibot_loss_is_the_entropy_when_student_equals_teacher() -> None:
    # student logits whose softmax at tau_s equals the teacher targets: cross-entropy = entropy,
    # so loss - entropy = KL = 0, and no student can do better (KL >= 0).
    torch.manual_seed(3)
    masks = torch.tensor([[True, True, False], [False, True, True]])
    student = torch.randn(4, 5)
    targets = torch.softmax(student / 0.1, dim=-1)
    entropy = ibot_loop(targets, torch.log(targets) * 0.1, masks, 0.1)
    loss = ibot_patch_loss(targets, student, masks, 0.1)
    assert loss.item() == pytest.approx(entropy, rel=1e-5)
    other = ibot_patch_loss(targets, student + torch.randn(4, 5), masks, 0.1)
    assert other.item() > loss.item()


def test_cross_view_loss_equals_dino_loss_with_its_softmax_targets() -> None:
    torch.manual_seed(4)
    student, teacher = torch.randn(4, 3, 7), torch.randn(2, 3, 7)
    dino = DINOLoss(7, student_temp=0.1).eval()
    dino.center.copy_(torch.randn(1, 7))
    targets = torch.softmax((teacher - dino.center) / 0.05, dim=-1)
    assert torch.equal(cross_view_loss(targets, student, 0.1), dino(student, teacher, 0.05))


def test_patch_centre_follows_momentum_only_in_training() -> None:
    centre = PatchCentre(3, momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    centre.update(logits)
    torch.testing.assert_close(centre.center, torch.tensor([[0.2, 0.2, 0.2]]))
    centre.eval()
    centre.update(logits * 10)
    torch.testing.assert_close(centre.center, torch.tensor([[0.2, 0.2, 0.2]]))
    torch.testing.assert_close(centre.targets(logits, 1.0), torch.softmax(logits - 0.2, dim=-1))


@pytest.mark.parametrize("count", [0, 1, 5, 13, 32, 64])
def test_block_mask_hits_the_target_count_exactly(count: int) -> None:
    mask = block_mask((8, 8), count, np.random.default_rng(count), max_patches=32)
    assert mask.shape == (8, 8) and mask.dtype == bool and int(mask.sum()) == count


def test_block_mask_is_made_of_blocks() -> None:
    # with a generous block size, a 20-patch target on 14 x 14 is mostly covered by rectangles:
    # most masked patches have a masked 4-neighbour (random scattering would give ~10 %).
    rng = np.random.default_rng(0)
    neighbours = []
    for _ in range(20):
        mask = block_mask((14, 14), 20, rng, max_patches=98)
        padded = np.pad(mask, 1)
        near = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        neighbours.append((mask & near).sum() / mask.sum())
    assert np.mean(neighbours) > 0.8


def test_crop_masks_ratio_statistics_within_bounds() -> None:
    rng = np.random.default_rng(5)
    patches, ratios, masked_crops = 14 * 14, [], 0
    for _ in range(300):
        masks = sample_crop_masks(2, (14, 14), rng, probability=0.5, ratio=(0.1, 0.5))
        for crop in masks:
            if crop.any():
                masked_crops += 1
                ratios.append(crop.sum() / patches)
    ratios = np.array(ratios)
    assert ratios.min() >= int(0.1 * patches) / patches and ratios.max() <= 0.5
    assert abs(ratios.mean() - 0.3) < 0.02  # uniform(0.1, 0.5) has mean 0.3
    assert abs(masked_crops / 600 - 0.5) < 0.06  # mask_probability
    assert not sample_crop_masks(2, (4, 4), rng, probability=0.0, ratio=(0.1, 0.5)).any()
