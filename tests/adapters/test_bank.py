"""AdapterBank: per-task adapters + heads on one frozen encoder, never mixed."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fedecho.adapters import AdapterBank, AdapterStateError, lora_state_dict
from fedecho.config.model import BackboneConfig, LoraConfig
from fedecho.models import Backbone, build_backbone, find_batch_norms


class FeatureHead(nn.Module):
    """Logits from the last feature map: (B, C, h, w) -> 1x1 conv -> spatial mean -> (B, classes)."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, classes, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(maps[-1]).mean(dim=(2, 3))


def encoder(name: str = "vit-tiny", seed: int = 0) -> Backbone:
    return build_backbone(BackboneConfig(name=name, image_size=32, seed=seed))


def make_bank(name: str = "vit-tiny", seed: int = 0, head_seed: int = 0) -> AdapterBank:
    bank = AdapterBank(encoder(name, seed))
    torch.manual_seed(head_seed)
    bank.add_task("view", LoraConfig(rank=2, seed=1), nn.Linear(bank.encoder.embed_dim, 3))
    channels = bank.encoder.feature_channels[-1]
    bank.add_task("quality", LoraConfig(rank=4, seed=2), FeatureHead(channels, 2), head_input="features")
    return bank


def images(size: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(size, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def train(bank: AdapterBank, task: str, steps: int = 3) -> None:
    bank.activate(task)
    bank.train()
    optimizer = torch.optim.Adam(bank.trainable_parameters(task), lr=1e-2)
    x = images()
    classes = 3 if task == "view" else 2
    labels = torch.arange(x.shape[0]) % classes
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(bank(x), labels).backward()
        optimizer.step()


def snapshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def encoder_base(bank: AdapterBank) -> dict[str, torch.Tensor]:
    return snapshot({k: v for k, v in bank.encoder.state_dict().items() if ".lora_" not in k})


def test_training_one_task_never_changes_another():
    bank = make_bank()
    view_before, quality_before = (
        snapshot(bank.task_state_dict("view")),
        snapshot(bank.task_state_dict("quality")),
    )
    base_before = encoder_base(bank)

    train(bank, "quality")
    quality_after = bank.task_state_dict("quality")
    assert all(torch.equal(v, view_before[k]) for k, v in bank.task_state_dict("view").items())
    assert all(p.grad is None for p in bank.trainable_parameters("view"))
    assert all(
        not torch.equal(v, quality_before[k])
        for k, v in quality_after.items()
        if ".lora_" in k or "conv" in k
    )

    train(bank, "view")
    assert all(torch.equal(v, quality_after[k]) for k, v in bank.task_state_dict("quality").items())
    assert any(not torch.equal(v, view_before[k]) for k, v in bank.task_state_dict("view").items())
    assert all(torch.equal(v, base_before[k]) for k, v in encoder_base(bank).items())


def test_batch_norm_encoder_statistics_do_not_move():
    bank = make_bank("resnet18")
    assert not find_batch_norms(bank)
    base_before = encoder_base(bank)
    train(bank, "view", steps=2)
    assert all(torch.equal(v, base_before[k]) for k, v in encoder_base(bank).items())


def test_trainable_parameters_are_exactly_the_active_task():
    bank = make_bank()
    for task in ("view", "quality"):
        bank.activate(task)
        assert bank.active == task
        trainable = {id(p) for p in bank.parameters() if p.requires_grad}
        assert trainable == {id(p) for p in bank.trainable_parameters(task)}
    rank, dim, layers = 2, 32, 4  # view: 4 layers x 4 projections x rank x (32 + 32), Linear(32, 3)
    assert (
        sum(p.numel() for p in bank.trainable_parameters("view")) == layers * 4 * rank * 2 * dim + 3 * dim + 3
    )


def test_a_head_keeps_its_own_frozen_parameters():
    bank = AdapterBank(encoder())
    head = nn.Sequential(nn.Linear(32, 8), nn.Linear(8, 3))
    head[0].weight.requires_grad_(False)
    bank.add_task("age", LoraConfig(), head)
    bank.add_task("view", LoraConfig(), nn.Linear(32, 3))
    bank.activate("age")
    assert not head[0].weight.requires_grad and head[0].bias.requires_grad
    assert all(p is not head[0].weight for p in bank.trainable_parameters("age"))


def test_task_state_dict_holds_that_task_only():
    bank = make_bank()
    state = bank.task_state_dict("view")
    adapter = {f"adapter.{k}" for k in lora_state_dict(bank.encoder, "view")}
    head = {f"head.{k}" for k in bank.head("view").state_dict()}
    assert set(state) == adapter | head
    assert head == {"head.weight", "head.bias"}
    assert all(v.shape[0] == 2 for k, v in state.items() if "lora_A" in k)  # rank 2, not quality's 4
    assert all("quality" not in k and "view" not in k for k in state)


def test_forward_routes_through_the_active_adapter_and_head():
    bank = make_bank()
    reference = encoder().eval()  # the same frozen encoder without adapters
    bank.eval()
    x = images()
    with torch.no_grad():
        bank.activate("view")
        torch.testing.assert_close(bank(x), bank.head("view")(reference.forward_embed(x)))  # lora_B = 0
    train(bank, "view")
    bank.eval()
    with torch.no_grad():
        trained = bank.encoder.forward_embed(x)
        assert not torch.allclose(trained, reference.forward_embed(x))
        torch.testing.assert_close(bank(x), bank.head("view")(trained))
        bank.activate("quality")  # untrained adapter: the encoder is the reference again
        torch.testing.assert_close(bank(x), bank.head("quality")(reference.forward_features(x)))


def test_save_and_load_restore_every_task(tmp_path):
    bank = make_bank()
    train(bank, "view", steps=2)
    train(bank, "quality", steps=2)
    paths = bank.save(tmp_path)
    assert sorted(p.name for p in paths) == ["quality.safetensors", "view.safetensors"]

    fresh = make_bank(head_seed=7)  # same encoder, other head initialisation
    assert not torch.equal(fresh.head("view").weight, bank.head("view").weight)
    fresh.load(tmp_path)
    x = images()
    bank.eval()
    fresh.eval()
    for task in ("view", "quality"):
        expected = bank.task_state_dict(task)
        loaded = fresh.task_state_dict(task)
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
        bank.activate(task)
        fresh.activate(task)
        with torch.no_grad():
            assert torch.equal(fresh(x), bank(x))


def test_load_reports_missing_files_and_config_mismatches(tmp_path):
    bank = make_bank()
    bank.save(tmp_path)
    (tmp_path / "quality.safetensors").unlink()
    other = AdapterBank(encoder())
    other.add_task("view", LoraConfig(rank=8, seed=1), nn.Linear(32, 3))
    other.add_task("quality", LoraConfig(rank=4, seed=2), FeatureHead(32, 2), head_input="features")
    with pytest.raises(AdapterStateError) as err:
        other.load(tmp_path)
    message = str(err.value)
    assert (
        f"{tmp_path / 'view.safetensors'}: LoRA config differs" in message
        and "rank: file 2, bank 8" in message
    )
    assert f"{tmp_path / 'quality.safetensors'}: file not found (saved tasks: view)" in message


def test_load_refuses_a_file_with_foreign_tensors(tmp_path):
    bank = make_bank()
    bank.save(tmp_path)
    path = tmp_path / "view.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    state["head.extra"] = torch.zeros(1)
    save_file(state, str(path), metadata=metadata)
    before = snapshot(bank.task_state_dict("view"))
    with pytest.raises(AdapterStateError, match=re.escape(f"{path}: head unexpected keys (1): extra")):
        bank.load(tmp_path, tasks=["view"])
    assert all(torch.equal(v, before[k]) for k, v in bank.task_state_dict("view").items())
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    bank.add_task("broken", LoraConfig(), nn.Linear(32, 3))
    with pytest.raises(AdapterStateError, match="broken.safetensors: not a readable safetensors file"):
        bank.load(tmp_path, tasks=["broken"])


def test_load_task_state_dict_is_strict():
    bank = make_bank()
    view = bank.task_state_dict("view")
    with pytest.raises(AdapterStateError) as err:
        bank.load_task_state_dict("quality", view)  # another task's tensors: ranks and head differ
    message = str(err.value)
    assert "state for task 'quality' does not fit" in message
    assert re.search(r"adapter .*: shape \(2, 32\), expected \(4, 32\)", message)
    assert "head missing keys (2): conv.bias, conv.weight" in message
    with pytest.raises(AdapterStateError, match="keys outside 'adapter.' / 'head.': encoder.weight"):
        bank.load_task_state_dict("view", {**view, "encoder.weight": torch.zeros(1)})
    changed = {k: v + 1 for k, v in view.items()}
    bank.load_task_state_dict("view", changed)
    assert all(torch.equal(v, changed[k]) for k, v in bank.task_state_dict("view").items())


def test_bank_errors_name_the_fix():
    bank = AdapterBank(encoder("r3d-tiny"))
    with pytest.raises(ValueError, match="no task yet; call add_task first"):
        bank(torch.zeros(1, 1, 4, 16, 16))
    with pytest.raises(ValueError, match="has no spatial neck; use head_input='embed'"):
        bank.add_task("ef", LoraConfig(), nn.Linear(512, 1), head_input="features")
    head = nn.Linear(512, 1)
    bank.add_task("ef", LoraConfig(rank=2), head)
    with pytest.raises(ValueError, match="already in the bank"):
        bank.add_task("ef", LoraConfig(), nn.Linear(512, 1))
    with pytest.raises(ValueError, match="already belongs to another task"):
        bank.add_task("age", LoraConfig(), head)
    for bad in ("keys", "lv.seg", ""):
        with pytest.raises(ValueError, match="no dots, not a ModuleDict attribute"):
            bank.add_task(bad, LoraConfig(), nn.Linear(512, 1))
    with pytest.raises(ValueError, match="'nope' matches no module"):
        bank.add_task("age", LoraConfig(target_modules=["nope"]), nn.Linear(512, 1))
    assert bank.tasks == ["ef"] and list(bank.heads) == ["ef"]
    with pytest.raises(ValueError, match="unknown task 'view'; the bank holds: ef"):
        bank.activate("view")
    assert bank(torch.zeros(2, 1, 4, 16, 16)).shape == (2, 1)
