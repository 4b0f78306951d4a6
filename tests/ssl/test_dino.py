"""DINO loss, centring, teacher-temperature schedule, EMA teacher and DINO head (Caron et al. 2021)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedecho.ssl.dino import DINOLoss, teacher_temperature
from fedecho.ssl.ema import cosine_momentum, ema_update_
from fedecho.ssl.heads import DINOHead


def _softmax(values: list[float], temp: float) -> list[float]:
    exps = [math.exp(v / temp) for v in values]
    return [e / sum(exps) for e in exps]


def test_loss_equals_hand_computation() -> None:
    # 2 global + 1 local student crops, batch 2, K = 3; centre c = (0.1, -0.2, 0.0)
    student = torch.tensor([
        [[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]],
        [[0.0, 1.0, 0.0], [0.3, -0.4, 0.9]],
        [[-0.5, 0.5, 1.5], [0.0, 0.0, 2.0]],
    ])
    teacher = torch.tensor([
        [[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]],
        [[0.0, 0.5, 0.5], [1.0, 1.0, -1.0]],
    ])
    centre = [0.1, -0.2, 0.0]
    loss_fn = DINOLoss(out_dim=3, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.tensor([centre]))
    t_temp = 0.04
    terms = []
    for v in range(2):  # teacher views
        for s in range(3):  # student views
            if s == v:
                continue
            for b in range(2):
                p = _softmax([teacher[v, b, k].item() - centre[k] for k in range(3)], t_temp)
                q = _softmax([student[s, b, k].item() for k in range(3)], 0.1)
                terms.append(-sum(p[k] * math.log(q[k]) for k in range(3)))
    expected = sum(terms) / len(terms)  # 4 view pairs x 2 samples
    assert float(loss_fn(student, teacher, t_temp)) == pytest.approx(expected, rel=1e-5)


def test_centre_update_follows_momentum_formula_only_in_training() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 4, generator=g)
    student = torch.randn(3, 5, 4, generator=g)
    loss_fn = DINOLoss(out_dim=4, center_momentum=0.9)
    old = torch.randn(1, 4, generator=g)
    loss_fn.center.copy_(old)
    loss_fn.eval()
    loss_fn(student, teacher, 0.04)
    assert torch.equal(loss_fn.center, old)
    loss_fn.train()
    loss_fn(student, teacher, 0.04)
    expected = 0.9 * old + 0.1 * teacher.reshape(10, 4).mean(dim=0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, expected, rtol=1e-6, atol=1e-7)


def test_loss_uses_centre_from_before_the_batch() -> None:
    g = torch.Generator().manual_seed(1)
    teacher, student = torch.randn(2, 3, 6, generator=g), torch.randn(4, 3, 6, generator=g)
    a, b = DINOLoss(6), DINOLoss(6).eval()
    assert float(a(student, teacher, 0.05)) == pytest.approx(float(b(student, teacher, 0.05)), rel=1e-6)
    assert not torch.equal(a.center, b.center)  # a updated its centre, after computing the loss


def test_teacher_receives_no_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    student = torch.randn(3, 2, 5, generator=g, requires_grad=True)
    teacher = torch.randn(2, 2, 5, generator=g, requires_grad=True)
    DINOLoss(5)(student, teacher, 0.04).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_teacher_temperature_schedule() -> None:
    assert teacher_temperature(0, 0.07, 0.04, 30) == pytest.approx(0.04)
    assert teacher_temperature(15, 0.07, 0.04, 30) == pytest.approx(0.055)
    assert teacher_temperature(30, 0.07, 0.04, 30) == pytest.approx(0.07)
    assert teacher_temperature(1000, 0.07, 0.04, 30) == pytest.approx(0.07)
    assert teacher_temperature(0, 0.04, 0.01, 0) == pytest.approx(0.04)


def test_ema_gives_exact_convex_combination() -> None:
    torch.manual_seed(3)
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    teacher = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    student[1].running_mean.normal_()
    student[1].num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    for m in (0.75, 0.996):
        teacher.load_state_dict(before)
        ema_update_(teacher, student, m)
        for name, value in teacher.state_dict().items():
            s = student.state_dict()[name]
            if name.endswith("num_batches_tracked"):
                assert int(value) == 7
            elif m == 0.75:  # dyadic momentum: both sides are exact in float32
                assert torch.equal(value, m * before[name] + (1 - m) * s)
            else:
                torch.testing.assert_close(value, m * before[name] + (1 - m) * s, rtol=1e-6, atol=1e-7)
    teacher.load_state_dict(before)
    ema_update_(teacher, student, 1.0)  # floats unchanged; integer counters follow the student
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items() if v.is_floating_point())
    ema_update_(teacher, student, 0.0)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in teacher.state_dict().items())


def test_ema_rejects_mismatched_modules() -> None:
    with pytest.raises(ValueError, match="differ in tensor names"):
        ema_update_(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.9)
    with pytest.raises(ValueError, match="shape mismatch"):
        ema_update_(nn.Linear(2, 2), nn.Linear(2, 3), 0.9)
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(nn.Linear(2, 2), nn.Linear(2, 2), 1.5)


def test_cosine_momentum_schedule() -> None:
    assert cosine_momentum(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(500, 100, 0.996, 1.0) == pytest.approx(1.0)


def test_dino_head_shapes_and_weight_normed_last_layer() -> None:
    torch.manual_seed(4)
    head = DINOHead(in_dim=8, out_dim=32, hidden_dim=16, bottleneck_dim=6)
    out = head(torch.randn(5, 8))
    assert out.shape == (5, 32)
    gain = head.last_layer.weight_g
    assert not gain.requires_grad and torch.equal(gain, torch.ones_like(gain))
    # with gain 1 the prototypes are unit vectors and the input is L2-normalised: |logit| <= 1
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(32))
    assert out.abs().max() <= 1.0 + 1e-5
    free = DINOHead(8, 32, 16, 6, norm_last_layer=False)
    assert free.last_layer.weight_g.requires_grad
