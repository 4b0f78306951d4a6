"""Device-side batched augmentation vs the per-sample CPU path: same parameters, same result.

For each example the CPU preset is run with a generator and the device path draws its parameters
with an identically seeded one; the outputs are then compared on a fixed batch: op by op (flip
and jitter exactly, rotation and crop within the one-vs-two-resamplings difference), and for the
full ``seg_train`` pipeline on images, clips, masks and points.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedecho.config.ssl import AugmentConfig
from fedecho.transforms import (
    Compose,
    Normalize,
    PadToSquare,
    RandomApply,
    RandomColorJitter,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    build_transform,
)
from fedecho.transforms.batched import AUGMENT_KEY, augment_batch, sample_params

S = 48
B = 8


def _frames(n: int, h: int = S, w: int = S) -> list[np.ndarray]:
    """Smooth uint8 frames (1, H, W) with a bright disc: interpolation errors stay small."""
    yy, xx = np.mgrid[:h, :w]
    out = []
    for i in range(n):
        base = 110 + 60 * np.sin(xx / 6.0 + i) * np.cos(yy / 8.0)
        disc = ((xx - 20 - i) ** 2 + (yy - 24) ** 2) < 90
        out.append(np.clip(base + 70 * disc, 0, 255).astype(np.uint8)[None])
    return out


def _masks(n: int, h: int = S, w: int = S) -> list[np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    return [((((xx - 20 - i) ** 2 + (yy - 24) ** 2) < 90).astype(np.int64) + (xx > 40)) for i in range(n)]


POINTS = np.array([[12.0, 30.0], [33.5, 10.25], [40.0, 40.0]], np.float32)


def _run_both(transform: Compose, key: str = "image", with_mask: bool = True,
              frames: list[np.ndarray] | None = None) -> tuple[dict, dict]:
    """(CPU outputs stacked, device outputs) of ``transform`` on the fixed batch."""
    frames = frames if frames is not None else _frames(B)
    masks = _masks(len(frames), *frames[0].shape[-2:])
    cpu, params = [], []
    for i, frame in enumerate(frames):
        example = {key: frame.astype(np.float32) / 255.0, "points": POINTS.copy()}
        if with_mask:
            example["mask"] = masks[i]
        cpu.append(transform(example, np.random.default_rng([7, i])))
        params.append(sample_params(transform, frame.shape[-2:], np.random.default_rng([7, i])))
    batch = {key: torch.from_numpy(np.stack(frames)), "points": torch.from_numpy(np.stack([POINTS] * len(frames))),
             AUGMENT_KEY: torch.from_numpy(np.stack(params))}
    if with_mask:
        batch["mask"] = torch.from_numpy(np.stack(masks).astype(np.uint8))
    out = augment_batch(batch, "cpu")
    stacked = {k: torch.stack([torch.as_tensor(np.asarray(c[k])) for c in cpu]) for k in cpu[0]}
    return stacked, out


def _only(*transforms) -> Compose:
    return Compose([*transforms, Normalize(0.5, 0.5)])


def test_flip_and_jitter_match_exactly():
    cpu, dev = _run_both(_only(RandomHorizontalFlip(0.5), RandomApply(RandomColorJitter(0.4, 0.4), 0.8)))
    assert torch.allclose(dev["image"], cpu["image"], atol=1e-5)
    assert torch.equal(dev["mask"], cpu["mask"])
    assert torch.allclose(dev["points"], cpu["points"], atol=1e-5)


@pytest.mark.parametrize("step", [RandomRotation(20.0), RandomResizedCrop(S, scale=(0.5, 1.0))])
def test_rotation_and_crop_match_inside_the_border(step):
    cpu, dev = _run_both(_only(step))
    diff = (dev["image"] - cpu["image"]).abs()[..., 3:-3, 3:-3]
    assert diff.mean() < 2e-3  # normalised units (std 0.5): < 1/255 on average
    assert (diff > 0.02).float().mean() < 0.03  # larger only along the edge of the rotated-away corners
    assert (dev["mask"] == cpu["mask"]).float().mean() > 0.97
    assert torch.allclose(dev["points"], cpu["points"], atol=1e-4)


def test_seg_train_pipeline_is_equivalent_on_images_masks_points():
    cfg = dataclasses.replace(AugmentConfig(), image_size=S, hflip_prob=0.5, rotation_degrees=15.0)
    cpu, dev = _run_both(build_transform("seg_train", cfg))
    diff = (dev["image"] - cpu["image"]).abs()
    grey_level = (1 / 255) / 0.5  # one grey level in normalised units
    assert diff[..., 3:-3, 3:-3].mean() < grey_level  # two bilinear resamplings (CPU) vs one (device)
    assert diff.mean() < 1e-2
    # the same distribution: per-sample mean and spread agree
    assert torch.allclose(dev["image"].mean((1, 2, 3)), cpu["image"].mean((1, 2, 3)), atol=grey_level)
    assert torch.allclose(dev["image"].std((1, 2, 3)), cpu["image"].std((1, 2, 3)), atol=grey_level)
    assert (dev["mask"] == cpu["mask"]).float().mean() > 0.97
    assert dev["mask"].dtype == torch.int64 and dev["image"].dtype == torch.float32
    assert torch.allclose(dev["points"], cpu["points"], atol=1e-4)


def test_clip_frames_share_one_map_and_non_square_input_is_padded():
    frames = _frames(4, 40, S)  # (1, 40, 48): PadToSquare first; crops are enlarged to S (as from the cache)
    clip = np.stack(frames, axis=1)  # (1, T=4, 40, 48)
    cfg = dataclasses.replace(AugmentConfig(), image_size=S, hflip_prob=0.5, rotation_degrees=15.0)
    transform = build_transform("seg_train", cfg)
    cpu_clips, params = [], []
    for i in range(3):
        example = {"clip": clip.astype(np.float32) / 255}
        cpu_clips.append(torch.as_tensor(transform(example, np.random.default_rng(i))["clip"]))
        params.append(sample_params(transform, clip.shape[-2:], np.random.default_rng(i)))
    batch = {"clip": torch.from_numpy(np.stack([clip] * 3)), AUGMENT_KEY: torch.from_numpy(np.stack(params))}
    dev = augment_batch(batch, "cpu")["clip"]
    cpu = torch.stack(cpu_clips)
    assert dev.shape == cpu.shape == (3, 1, 4, S, S)
    assert (dev - cpu).abs()[..., 3:-3, 3:-3].mean() < (1 / 255) / 0.5  # under one grey level


def test_parameters_are_the_cpu_presets_draws_and_reproducible():
    cfg = dataclasses.replace(AugmentConfig(), image_size=S, hflip_prob=0.5)
    transform = build_transform("seg_train", cfg)
    g_cpu, g_dev = np.random.default_rng(3), np.random.default_rng(3)
    transform({"image": np.zeros((1, S, S), np.float32)}, g_cpu)
    first = sample_params(transform, (S, S), g_dev)
    assert g_cpu.random() == g_dev.random()  # the same number of draws, in the same order
    assert np.array_equal(first, sample_params(transform, (S, S), np.random.default_rng(3)))
    assert not np.array_equal(first, sample_params(transform, (S, S), np.random.default_rng(4)))


def test_eval_preset_at_the_training_size_only_scales_and_normalises():
    transform = build_transform("eval", dataclasses.replace(AugmentConfig(), image_size=S))
    frames = _frames(2)
    params = [sample_params(transform, (S, S), np.random.default_rng(0)) for _ in frames]
    out = augment_batch({"image": torch.from_numpy(np.stack(frames)), AUGMENT_KEY: torch.from_numpy(np.stack(params))})
    expected = (torch.from_numpy(np.stack(frames)).float() / 255 - 0.5) / 0.5
    assert torch.allclose(out["image"], expected, atol=1e-6)


def test_unsupported_preset_names_the_loader_switch():
    with pytest.raises(ValueError, match="train.augment_on=loader"):
        sample_params(build_transform("simclr", AugmentConfig(image_size=S)), (S, S), np.random.default_rng(0))
    with pytest.raises(ValueError, match="train.augment_on=loader"):
        sample_params(Compose([RandomHorizontalFlip(0.5), PadToSquare()]), (S, S), np.random.default_rng(0))


def test_batch_without_parameters_is_only_moved():
    batch = {"image": torch.rand(2, 1, 8, 8), "label": torch.tensor([1, 2]), "item_id": ["a", "b"]}
    out = augment_batch(batch, "cpu")
    assert torch.equal(out["image"], batch["image"]) and out["item_id"] == ["a", "b"]
