"""Classification on clips (as_present / as_severity / lvh_present with R3D backbones), the
lvh_present label rule, and the image path left as it was. Tiny: r3d-tiny at 32 px, 8 frames."""

from __future__ import annotations

import copy
import csv
import json
from collections import defaultdict

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from fedecho.config.model import BackboneConfig
from fedecho.config.task import TaskConfig
from fedecho.data.base import open_reader
from fedecho.data.errors import EchoDataError
from fedecho.data.schema import AS_GRADES, ItemRecord, Sample
from fedecho.data.synthetic import synthesize
from fedecho.models import build_backbone
from fedecho.tasks import LVH_WALL_THRESHOLD_CM, TASKS, TaskDataset, build_task, collate_examples
from fedecho.tasks.frames import frame_index
from fedecho.tasks.lvh_present import lvh_from_measurements

SIZE = 32
FRAMES = 8


def _cfg(name: str, **kwargs) -> TaskConfig:
    return TaskConfig(name=name, image_size=SIZE, clip_length=FRAMES, clip_stride=1, **kwargs)


_BACKBONES: dict[str, nn.Module] = {}


def _backbone(name: str = "r3d-tiny") -> nn.Module:
    """A fresh copy of a seeded tiny video backbone (built once per module: building is slow)."""
    if name not in _BACKBONES:
        torch.manual_seed(0)
        _BACKBONES[name] = build_backbone(BackboneConfig(name=name, image_size=SIZE))
    return copy.deepcopy(_BACKBONES[name])


class TinyImageBackbone(nn.Module):
    """An image backbone satisfying the models contract (embedding = mean of one conv)."""

    input_kind = "image"
    in_channels = 1
    embed_dim = 8
    feature_channels: tuple[int, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, stride=4, padding=1)

    def forward_embed(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def _ramp_video(num_frames: int = 20, path: str = "/site/cine.dcm", labels: dict | None = None) -> Sample:
    """A video whose frame t is the constant t (so a clip's values say which frames it holds)."""
    frames = np.broadcast_to(np.arange(num_frames, dtype=np.uint8)[:, None, None], (num_frames, 40, 48)).copy()
    return Sample("t", "p", "s", "cine", frames, labels=labels or {"as_grade": "severe_AS"}, path=path)


def _still(path: str = "/site/still.dcm") -> Sample:
    return Sample("t", "p", "s", "still", np.full((40, 48), 7, np.uint8), labels={"as_grade": "no_AS"}, path=path)


@pytest.fixture(scope="module")
def dicom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    synthesize("dicom", root, patients=5, seed=0, image_size=SIZE)
    return root


# --- binding the input kind -----------------------------------------------------------------------
def test_clip_backbone_binds_clips_and_image_backbone_keeps_images():
    task = build_task(_cfg("as_present", frame_sampling="center"))
    assert task.input_kind == "image"
    head = task.build_head(_backbone())
    assert task.input_kind == "clip" and head(torch.zeros(2, 512)).shape == (2, 2)
    example = task.make_example(_ramp_video(), None, np.random.default_rng(0))
    assert set(example) == {"clip", "label", "patient_id", "study_id", "item_id"}
    assert example["clip"].shape == (1, FRAMES, SIZE, SIZE) and example["clip"].dtype == np.float32
    # 20 frames, 8 at stride 1, centred: start (20 - 8) // 2 = 6 -> frames 6..13
    np.testing.assert_allclose(example["clip"][0, :, 0, 0] * 255, np.arange(6, 14), atol=1e-4)
    assert example["label"] == 1

    strided = build_task(TaskConfig(name="lvh_present", image_size=SIZE, clip_length=4, clip_stride=3,
                                    frame_sampling="center"))
    strided.check_backbone(_backbone())
    clip = strided.make_example(_ramp_video(labels={"lvh": "LVH"}), None, np.random.default_rng(0))["clip"]
    # span (4 - 1) * 3 + 1 = 10, start (20 - 10) // 2 = 5 -> frames 5, 8, 11, 14
    np.testing.assert_allclose(clip[0, :, 0, 0] * 255, [5, 8, 11, 14], atol=1e-4)

    task.check_backbone(TinyImageBackbone())  # the same task back on an image backbone
    assert task.input_kind == "image"


def test_random_clip_start_follows_the_generator():
    task = build_task(_cfg("as_severity"))
    task.check_backbone(_backbone())
    first = [task.make_example(_ramp_video(), None, np.random.default_rng(s))["clip"][0, 0, 0, 0] for s in range(8)]
    again = [task.make_example(_ramp_video(), None, np.random.default_rng(s))["clip"][0, 0, 0, 0] for s in range(8)]
    starts = sorted({round(float(v) * 255) for v in first})
    assert first == again and len(starts) > 1 and min(starts) >= 0 and max(starts) <= 20 - FRAMES


def test_image_path_unchanged_with_image_backbone():
    task = build_task(TaskConfig(name="as_present", image_size=SIZE, frame_sampling="center"))
    backbone = TinyImageBackbone()
    head = task.build_head(backbone)
    video = _ramp_video(20)
    example = task.make_example(video, None, np.random.default_rng(0))
    assert set(example) == {"image", "label", "patient_id", "study_id", "item_id"}
    assert example["image"].shape == (1, SIZE, SIZE)
    np.testing.assert_allclose(example["image"] * 255, 10, atol=1e-4)  # centre frame 20 // 2
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    random_task = build_task(TaskConfig(name="as_present", image_size=SIZE))
    frame = random_task.make_example(video, None, rng_a)["image"][0, 0, 0] * 255
    assert round(float(frame)) == frame_index(20, "random", rng_b)
    still = task.make_example(_still(), None, np.random.default_rng(0))
    np.testing.assert_allclose(still["image"] * 255, 7, atol=1e-4)
    logits = task.forward(backbone, head, {"image": torch.rand(3, 1, SIZE, SIZE)})
    assert logits.shape == (3, 2)


def test_image_record_with_clip_backbone_names_the_file_and_the_fix():
    task = build_task(_cfg("as_present"))
    task.check_backbone(_backbone())
    with pytest.raises(EchoDataError, match=r"/site/still\.dcm: task 'as_present' on a clip backbone needs "
                                            r"videos.*data\.on_error=skip.*image backbone"):
        task.make_example(_still(), None, np.random.default_rng(0))


def test_kind_mismatches_raise_and_view_stays_image_only():
    with pytest.raises(ValueError, match=r"takes single images .* use an image backbone"):
        build_task(_cfg("view")).check_backbone(_backbone())
    with pytest.raises(ValueError, match="takes images, not clips"):
        build_task(_cfg("view")).bind_input_kind("clip")
    with pytest.raises(ValueError, match="input kind must be one of"):
        build_task(_cfg("as_present")).bind_input_kind("volume")
    task = build_task(_cfg("as_present"))  # never shown its backbone: still bound to images
    with pytest.raises(ValueError, match=r"bound to images .* call task\.check_backbone\(backbone\)"):
        task.forward(_backbone(), nn.Linear(512, 2), {"clip": torch.zeros(1, 1, FRAMES, SIZE, SIZE)})


@pytest.mark.parametrize(("name", "backbone_name", "classes"), [
    ("as_severity", "r3d-tiny", len(AS_GRADES)),
    ("lvh_present", "r2plus1d-tiny", 2),
])
def test_as_severity_and_lvh_present_on_clip_backbones(name, backbone_name, classes):
    task = build_task(_cfg(name))
    backbone = _backbone(backbone_name)
    head = task.build_head(backbone)
    assert task.input_kind == "clip"
    with torch.no_grad():
        outputs = task.forward(backbone, head, {"clip": torch.rand(2, 1, FRAMES, SIZE, SIZE)})
    assert outputs.shape == (2, classes) and torch.isfinite(outputs).all()


# --- as_present on synthetic DICOM cines ---------------------------------------------------------
def test_as_present_on_dicom_clips_trains_a_step_and_auroc_equals_sklearn(dicom_root):
    reader = open_reader("dicom", dicom_root)
    records = reader.scan().records
    assert records and all(r.labels.get("as_grade") in AS_GRADES for r in records)  # labels.csv carries as_grade
    is_video = {r.item_id: reader.load(r).is_video for r in records}
    stills = sorted(r.path for r in records if not is_video[r.item_id])
    assert stills  # the synthetic DICOM export holds single frames with an as_grade too

    task = build_task(_cfg("as_present"))
    backbone = _backbone()
    head = task.build_head(backbone)
    with pytest.raises(EchoDataError, match="on a clip backbone needs videos"):
        dataset = TaskDataset(reader, [r for r in records if not is_video[r.item_id]], task)
        dataset[0]
    dataset = TaskDataset(reader, records, task, seed=0, on_error="skip")
    batch = collate_examples([dataset[i] for i in range(len(dataset))])
    assert sorted(issue.path for issue in dataset.skipped) == stills  # stills skipped, logged, nothing else
    n = sum(is_video.values())
    assert batch["clip"].shape == (n, 1, FRAMES, SIZE, SIZE) and int(batch["num_skipped"]) == len(stills)
    labels = batch["label"].numpy()
    assert set(labels.tolist()) == {0, 1}

    params = [*backbone.parameters(), *head.parameters()]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.1)
    backbone.train()
    step = {k: v[:4] for k, v in batch.items() if isinstance(v, Tensor) and v.ndim}  # a 4-clip training step
    loss = task.loss(task.forward(backbone, head, step), step)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and all(p.grad is not None for p in head.parameters())
    assert not torch.equal(before[0], params[0])  # the stem moved: the encoder is fine-tuned on clips

    backbone.eval()
    with torch.no_grad():
        outputs = task.forward(backbone, head, batch)
    metrics = task.metrics(outputs, batch)
    expected = roc_auc_score(labels, torch.softmax(outputs, dim=1)[:, 1].numpy())
    assert task.primary_metric == "auroc"
    assert metrics["auroc"] == pytest.approx(expected, abs=1e-12)


# --- lvh_present labels ---------------------------------------------------------------------------
def _record(labels: dict, path: str = "/lvh/Batch1/0XABC.avi") -> ItemRecord:
    return ItemRecord(source="t", patient_id="p", study_id="p", item_id="0XABC", path=path, labels=labels)


@pytest.mark.parametrize(("measurements", "expected"), [
    ({"IVSd": 1.09, "LVPWd": 1.09}, 0),
    ({"IVSd": 1.10, "LVPWd": 0.80}, 1),  # the threshold itself is LVH
    ({"IVSd": 1.11, "LVPWd": 0.80}, 1),
    ({"IVSd": 0.80, "LVPWd": 1.09}, 0),
    ({"IVSd": 0.80, "LVPWd": 1.10}, 1),
    ({"IVSd": 0.80, "LVPWd": 1.11}, 1),
    ({"IVSd": 1.30, "LVIDd": 4.8}, 1),  # one thick wall decides, even without the other
    ({"IVSd": 0.90, "LVIDd": 4.8}, None),  # one thin wall cannot say normal
    ({"LVIDd": 4.8, "LVIDs": 3.0}, None),  # neither wall measured
    ({"IVSd": float("nan"), "LVPWd": 0.9}, None),  # NaN = not measured
    ({"IVSd": 1.0, "LVPWd": 1.0, "IVSs": 1.5, "LVPWs": 1.6}, 0),  # systolic walls do not count
])
def test_lvh_present_label_is_the_threshold_rule(measurements, expected):
    assert LVH_WALL_THRESHOLD_CM == 1.1
    task = build_task(TaskConfig(name="lvh_present", image_size=SIZE))
    record = _record({"measurements": measurements})
    assert task.example_keys(record) == ([] if expected is None else [None])
    assert lvh_from_measurements(measurements) == (None if expected is None else bool(expected))
    if expected is not None:
        sample = _ramp_video(labels=dict(record.labels))
        assert task.make_example(sample, None, np.random.default_rng(0))["label"] == expected


def test_lvh_label_column_wins_and_bad_values_name_the_file():
    task = build_task(TaskConfig(name="lvh_present"))
    thick = {"IVSd": 1.4, "LVPWd": 1.3}
    for value, index in (("normal", 0), ("LVH", 1), ("lvh", 1), (True, 1), (0, 0), (1.0, 1)):
        assert task.class_of({"lvh": value, "measurements": thick}, "/x") == index
    assert task.class_of({"lvh": "", "measurements": thick}, "/x") == 1  # blank cell: the rule decides
    site = build_task(TaskConfig(name="lvh_present", label_key="lvh_report"))
    assert site.class_of({"lvh_report": "normal", "measurements": thick}, "/x") == 0
    with pytest.raises(EchoDataError, match=r"/lvh/Batch1/0XABC\.avi: label lvh='maybe' is not an LVH label"):
        task.example_keys(_record({"lvh": "maybe"}))
    with pytest.raises(EchoDataError, match=r"0XABC\.avi: measurement IVSd=11\.0 .* in mm\?"):
        task.example_keys(_record({"measurements": {"IVSd": 11.0, "LVPWd": 9.0}}))
    with pytest.raises(EchoDataError, match="IVSd='thick' is not a number"):
        task.example_keys(_record({"measurements": {"IVSd": "thick", "LVPWd": 0.9}}))
    with pytest.raises(ValueError, match="fixed classes"):
        build_task(TaskConfig(name="lvh_present", classes=("LVH", "normal")))


def test_lvh_present_is_registered_with_auroc_primary():
    assert "lvh_present" in TASKS.names()
    task = build_task(TaskConfig(name="lvh_present"))
    assert task.classes == ("normal", "LVH") and task.primary_metric == "auroc"
    assert task.metric_directions["auroc"] == "max"


def test_synthetic_echonet_lvh_gives_both_classes_by_the_rule(tmp_path):
    synthesize("echonet-lvh", tmp_path, patients=20, seed=0, image_size=SIZE)
    walls: dict[str, dict[str, float]] = defaultdict(dict)
    with open(tmp_path / "MeasurementsList.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            walls[row["HashedFileName"]][row["Calc"]] = float(row["CalcValue"])
    expected = {name: int(w["IVSd"] >= 1.1 or w["LVPWd"] >= 1.1) for name, w in walls.items()}
    task = build_task(TaskConfig(name="lvh_present"))
    records = open_reader("echonet-lvh", tmp_path).scan().records
    got = {r.item_id: task.class_of(r.labels, r.path) for r in records}
    assert got == expected and len(got) == 20
    assert 0 < sum(got.values()) < 20  # both classes (5 LVH of 20 for seed 0)


# --- end to end: fedecho train -------------------------------------------------------------------
def test_fedecho_train_r3d_tiny_as_present_on_synthetic_dicom(tmp_path):
    from fedecho.config.compose import compose_run_config
    from fedecho.engine.local import train_local

    out = tmp_path / "run"
    cfg = compose_run_config([
        "model=r3d18", "model.name=r3d-tiny", "task=as_present", "data.synthetic_format=dicom",
        # 10 patients, split seed 0: val and test both hold AS and no-AS patients
        "data.synthetic_patients=10", "data.split_seed=0", "data.label_fraction=0.5",
        f"data.synthetic_image_size={SIZE}", f"model.image_size={SIZE}", f"task.image_size=[{SIZE},{SIZE}]",
        f"task.clip_length={FRAMES}", "task.clip_stride=1", f"ssl.augment.image_size={SIZE}",
        "train.epochs=1", "train.batch_size=8", "train.lr=1e-3", f"train.out_dir={out}",
        f"data.root={tmp_path / 'data'}",
    ], "train")
    assert cfg.data.on_error == "skip"  # the synthetic export's single frames are skipped, logged
    results = train_local(cfg)
    assert results["epochs_run"] == 1 and results["selection"] == ["auroc", "max"]
    assert np.isfinite(results["history"][0]["val_auroc"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["test"]["loss"] == pytest.approx(results["test"]["loss"])
    arrays = np.load(results["predictions"])
    assert arrays["probs"].shape == (len(arrays["targets"]), 2) and set(arrays["targets"].tolist()) == {0, 1}
    expected = roc_auc_score(arrays["targets"], arrays["probs"][:, 1])
    assert results["test"]["auroc"] == pytest.approx(expected, abs=1e-6)
