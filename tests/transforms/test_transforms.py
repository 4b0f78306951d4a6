"""Echo augmentations: seeded, masks and points move with the image, ranges, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedecho.config.ssl import AugmentConfig
from fedecho.transforms import (
    PRESETS,
    Compose,
    CropBox,
    Normalize,
    PadToSquare,
    RandomApply,
    RandomColorJitter,
    RandomGaussianBlur,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    Resize,
    build_transform,
)
from fedecho.transforms.geometry import sample_resized_crop_box

H, W = 64, 80


def square_example() -> dict:
    """A bright square with mask label 2 over it, a dimmer disc labelled 1, and 2 points."""
    image = np.zeros((1, H, W), np.float32)
    mask = np.zeros((H, W), np.int64)
    image[0, 20:36, 30:50] = 1.0
    mask[20:36, 30:50] = 2
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - 48) ** 2 + (xx - 20) ** 2 < 36
    image[0][disc] = 0.3
    mask[disc] = 1
    points = np.array([[30.0, 20.0], [49.0, 35.0]], np.float32)  # corners of the square (x, y)
    return {"image": image, "mask": mask, "points": points, "label": 3, "item_id": "a4c_01"}


def blob_example(x0: float, y0: float, sigma: float = 2.5) -> dict:
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2)).astype(np.float32)
    return {"image": blob[None], "points": np.array([[x0, y0]], np.float32)}


def centroid(image: np.ndarray) -> np.ndarray:
    weights = np.asarray(image)[0].astype(np.float64)
    yy, xx = np.mgrid[: weights.shape[0], : weights.shape[1]]
    return np.array([(weights * xx).sum(), (weights * yy).sum()]) / weights.sum()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


GEOMETRIC_CASES = [
    (RandomResizedCrop(48, scale=(0.3, 1.0)), CropBox(top=10, left=20, height=40, width=50)),
    (RandomResizedCrop((96, 120)), CropBox(top=0, left=0, height=H, width=W)),
    (RandomHorizontalFlip(1.0), True),
    (RandomRotation(45), 30.0),
    (RandomRotation(45), -90.0),
    (PadToSquare(), None),
    (Resize((40, 100)), None),
]


@pytest.mark.parametrize(("transform", "params"), GEOMETRIC_CASES)
def test_mask_and_points_move_with_the_image(transform, params) -> None:
    out = transform.apply(
        {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in square_example().items()}, params
    )
    bright, labelled = out["image"][0].numpy() > 0.5, out["mask"].numpy() == 2
    assert iou(bright, labelled) > 0.85
    # nearest-neighbour masks never invent labels
    assert set(np.unique(out["mask"].numpy())) <= {0, 1, 2}
    assert out["mask"].dtype == torch.int64
    # a Gaussian blob's centroid follows its point to sub-pixel accuracy
    blob = transform.apply({k: torch.from_numpy(v) for k, v in blob_example(40.0, 30.0).items()}, params)
    np.testing.assert_allclose(centroid(blob["image"].numpy()), blob["points"][0].numpy(), atol=0.05)


def test_points_follow_flip_and_pad_exactly() -> None:
    ex = square_example()
    flipped = RandomHorizontalFlip(1.0)(ex, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped["points"], [[W - 1 - 30.0, 20.0], [W - 1 - 49.0, 35.0]])
    # pixel (row 20, col 30) holds the square corner; after the flip it is at column W - 1 - 30
    assert flipped["image"][0, 20, W - 1 - 30] == 1.0 and flipped["image"][0, 20, W - 1 - 29] == 0.0
    padded = PadToSquare()(ex)
    assert padded["image"].shape == (1, W, W) and padded["mask"].shape == (W, W)
    np.testing.assert_array_equal(padded["points"], ex["points"] + [0, (W - H) // 2])


@pytest.mark.parametrize("seed", range(6))
def test_seg_train_preset_keeps_mask_points_and_labels_aligned(seed: int) -> None:
    cfg = AugmentConfig(image_size=48, rotation_degrees=30, hflip_prob=0.5, seg_crop_scale=(0.6, 1.0))
    transform = build_transform("seg_train", cfg)
    out = transform(square_example(), np.random.default_rng(seed))
    assert out["image"].shape == (1, 48, 48) and out["mask"].shape == (48, 48)
    assert set(np.unique(out["mask"])) <= {0, 1, 2} and out["mask"].dtype == np.int64
    # the square is the brightest structure whatever the jitter: top intensities match label 2
    img = out["image"][0]
    assert iou(img > (img.max() + img[out["mask"] == 0].mean()) / 2, out["mask"] == 2) > 0.7
    assert out["label"] == 3 and out["item_id"] == "a4c_01"
    blob = transform(blob_example(40.0, 32.0), np.random.default_rng(seed))
    x, y = blob["points"][0]
    if 6 < x < 42 and 6 < y < 42:  # the blob is inside the output canvas
        # intensity jitter scales the blob and the background offset; remove the background first
        background = np.median(blob["image"])
        np.testing.assert_allclose(centroid(blob["image"] - background), [x, y], atol=0.6)


def test_same_seed_same_output_and_different_seed_differs() -> None:
    transform = build_transform("simclr", AugmentConfig(image_size=32))
    ex = square_example()
    a = transform(ex, np.random.default_rng(7))
    b = transform(ex, np.random.default_rng(7))
    c = transform(ex, np.random.default_rng(8))
    for key in ("image", "mask", "points"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])
    t1 = transform(ex, torch.Generator().manual_seed(3))
    t2 = transform(ex, torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(t1["image"], t2["image"])


def test_sampling_is_separate_from_applying() -> None:
    transform = RandomApply(RandomColorJitter(0.5, 0.5), p=0.8)
    ex = {"image": torch.rand(1, 8, 8)}
    params = transform.sample(ex, np.random.default_rng(5))
    replayed = transform.apply(ex, params)
    assert torch.equal(replayed["image"], transform(ex, np.random.default_rng(5))["image"])
    box = RandomResizedCrop(16).sample(ex, np.random.default_rng(0))
    assert isinstance(box, CropBox)


def test_random_resized_crop_boxes_respect_scale_and_bounds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        box = sample_resized_crop_box(rng, (H, W), (0.2, 0.6), (3 / 4, 4 / 3))
        assert 0 <= box.top and box.top + box.height <= H and 0 <= box.left and box.left + box.width <= W
        assert 0.2 * H * W * 0.85 <= box.height * box.width <= 0.6 * H * W * 1.15  # rounding


def test_intensities_stay_in_unit_range() -> None:
    transform = Compose([
        RandomRotation(40),
        RandomResizedCrop(40, scale=(0.2, 1.0)),
        RandomColorJitter(brightness=0.9, contrast=0.9),
        RandomGaussianBlur((0.1, 3.0)),
        RandomGrayscale(1.0),
    ])
    rng = np.random.default_rng(0)
    for _ in range(20):
        ex = {"image": rng.random((1, H, W), dtype=np.float32), "clip": rng.random((1, 4, H, W), dtype=np.float32)}
        ex["image"][0, :5] = 1.0  # saturated rows stress brightness > 1
        out = transform(ex, rng)
        for key in ("image", "clip"):
            assert out[key].min() >= 0.0 and out[key].max() <= 1.0
    for name in PRESETS:  # presets end in Normalize(0.5, 0.5): [0, 1] -> [-1, 1]
        out = build_transform(name, AugmentConfig(image_size=32, dino_local_size=16))(ex, rng)
        assert -1.0 <= out["image"].min() and out["image"].max() <= 1.0


def test_eval_preset_is_deterministic_and_needs_no_generator() -> None:
    transform = build_transform("eval", AugmentConfig(image_size=40))
    ex = square_example()
    a, b = transform(ex), transform(ex)
    for key in ("image", "mask", "points"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["image"].shape == (1, 40, 40) and a["mask"].shape == (40, 40)
    # pad (80 x 80, square shifted down by 8) then resize by 0.5 about pixel centres
    np.testing.assert_allclose(a["points"], (ex["points"] + [0, 8] + 0.5) * 0.5 - 0.5)
    np.testing.assert_allclose(a["image"], (Resize(40)(PadToSquare()(ex))["image"] - 0.5) / 0.5)


def test_clip_frames_share_one_transform() -> None:
    frame = square_example()["image"]
    clip = np.repeat(frame[:, None], 4, axis=1)  # (1, 4, H, W), identical frames
    out = build_transform("simclr", AugmentConfig(image_size=32))({"clip": clip}, np.random.default_rng(1))
    assert out["clip"].shape == (1, 4, 32, 32)
    for t in range(1, 4):
        np.testing.assert_allclose(out["clip"][:, t], out["clip"][:, 0], atol=1e-6)


def test_types_round_trip_and_input_untouched() -> None:
    ex = square_example()
    original = ex["image"].copy()
    out = RandomRotation(20)(ex, np.random.default_rng(0))
    assert isinstance(out["image"], np.ndarray) and out["image"].dtype == np.float32
    np.testing.assert_array_equal(ex["image"], original)
    tensor_out = RandomRotation(20)({"image": torch.from_numpy(original)}, np.random.default_rng(0))
    assert isinstance(tensor_out["image"], torch.Tensor)
    np.testing.assert_array_equal(tensor_out["image"].numpy(), out["image"])


def test_grayscale_is_a_no_op_on_one_channel_and_grays_rgb() -> None:
    gray = {"image": np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)}
    np.testing.assert_array_equal(RandomGrayscale(1.0)(gray, np.random.default_rng(0))["image"], gray["image"])
    rgb = {"image": np.random.default_rng(1).random((3, 8, 8), dtype=np.float32)}
    out = RandomGrayscale(1.0)(rgb, np.random.default_rng(0))["image"]
    np.testing.assert_allclose(out[0], out[1])
    np.testing.assert_allclose(out[1], out[2])
    r, g, b = rgb["image"]
    np.testing.assert_allclose(out[0], 0.2989 * r + 0.587 * g + 0.114 * b, atol=1e-3)


def test_normalize_and_bad_inputs() -> None:
    out = Normalize(0.25, 0.5)({"image": np.full((1, 2, 2), 0.75, np.float32)})
    np.testing.assert_allclose(out["image"], 1.0)
    with pytest.raises(TypeError, match="needs a generator"):
        RandomRotation(10)(square_example())
    with pytest.raises(ValueError, match="'image' must be a float array"):
        Resize(8)({"image": np.zeros((1, 4, 4), np.uint8), "item_id": "x"})
    with pytest.raises(ValueError, match="spatial sizes differ"):
        Resize(8)({"image": np.zeros((1, 4, 4), np.float32), "mask": np.zeros((5, 4), np.int64)})
    with pytest.raises(ValueError, match="integer label map"):
        Resize(8)({"image": np.zeros((1, 4, 4), np.float32), "mask": np.zeros((4, 4), np.float32)})
    with pytest.raises(ValueError, match="unknown transform preset 'nope'.*dino_global"):
        build_transform("nope")
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="blur_prob"):
        AugmentConfig(blur_prob=1.5)
