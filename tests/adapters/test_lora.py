"""LoRA on every backbone: training reaches every adapter tensor, the base stays frozen, adapter
state moves between processes, errors are clear."""

from __future__ import annotations

import math

import pytest
import torch
from peft.functional import get_peft_model_state_dict
from peft.tuners import lora as peft_lora
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn
from torchvision.models.video import r3d_18

from fedecho.adapters import (
    AdapterStateError,
    adapter_names,
    apply_lora,
    check_lora_targets,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    set_active_adapter,
)
from fedecho.config.model import BackboneConfig, LoraConfig
from fedecho.models import Backbone, FrozenBatchNorm, build_backbone, find_batch_norms
from fedecho.models.video_cnn import plain_conv3d

TINY = ["segformer-tiny", "vit-tiny", "resnet18", "r3d-tiny", "r2plus1d-tiny"]


def build(name: str, seed: int = 0, **kwargs) -> Backbone:
    return build_backbone(BackboneConfig(name=name, image_size=32, seed=seed, **kwargs))


def batch(backbone: Backbone, size: int = 2, seed: int = 0) -> torch.Tensor:
    """Images (size, 1, 64, 64): at 32 x 32 Segformer-tiny's first stage reduces keys/values to one
    token (sr ratio 8), where softmax is constant and q/k get no gradient. Clips (size, 1, 4, 16, 16)."""
    generator = torch.Generator().manual_seed(seed)
    if backbone.input_kind == "clip":
        return torch.randn(size, 1, 4, 16, 16, generator=generator)
    return torch.randn(size, 1, 64, 64, generator=generator)


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model that is not a LoRA tensor (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" not in k}


def lora_update_parameter_count(model: nn.Module, rank: int) -> int:
    """Closed form: a Linear(in, out) gets r * (in + out), a Conv(in, out, k) r * (in * prod(k) + out)."""
    total = 0
    for module in model.modules():
        if isinstance(module, peft_lora.LoraLayer):
            base = module.get_base_layer()
            if isinstance(base, nn.Linear):
                total += rank * (base.in_features + base.out_features)
            else:
                total += rank * (base.in_channels * math.prod(base.kernel_size) + base.out_channels)
    return total


@pytest.mark.parametrize("name", TINY)
def test_training_reaches_every_lora_tensor_and_never_the_base(name):
    """Guards the Segformer seed's bug (attention output dropped, so LoRA never trained)."""
    torch.manual_seed(0)
    backbone = apply_lora(build(name), LoraConfig(rank=4, alpha=8), "task")
    head = nn.Linear(backbone.embed_dim, 3)
    frozen = base_state(backbone)
    lora = lora_parameters(backbone, "task")
    assert lora and all(p.requires_grad for p in lora.values())
    trainable = {id(p) for p in backbone.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in lora.values()}
    initial = {k: p.detach().clone() for k, p in lora.items()}
    # Adam: each step moves every parameter with a non-zero gradient by about lr, however small the
    # gradient (q/k adapters of a random transformer get tiny ones)
    optimizer = torch.optim.Adam([*lora.values(), *head.parameters()], lr=1e-2)
    x, labels = batch(backbone, 4), torch.tensor([0, 1, 2, 0])
    backbone.train()
    for step in range(2):  # lora_B starts at 0, so lora_A's gradient is 0 until B has moved once
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(backbone.forward_embed(x)), labels)
        loss.backward()
        optimizer.step()
        if step == 0:
            zero_b = [k for k, p in lora.items() if ".lora_B." in k and not p.grad.abs().sum() > 0]
            assert not zero_b, f"no gradient reached {zero_b[:3]}"
    no_grad = [k for k, p in lora.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient reached {no_grad[:3]}"
    unchanged = [k for k, p in lora.items() if torch.equal(p, initial[k])]
    assert not unchanged, f"not updated: {unchanged[:3]}"
    after = base_state(backbone)
    assert after.keys() == frozen.keys()
    moved = [k for k in frozen if not torch.equal(after[k], frozen[k])]
    assert not moved, f"frozen base tensors changed: {moved[:3]}"


@pytest.mark.parametrize("name", TINY)
def test_new_adapter_leaves_outputs_unchanged_and_has_the_closed_form_size(name):
    backbone = build(name).eval()
    x = batch(backbone)
    with torch.no_grad():
        before = backbone.forward_embed(x)
        apply_lora(backbone, LoraConfig(rank=4), "task")
        after = backbone.forward_embed(x)
    torch.testing.assert_close(after, before)  # lora_B starts at zero
    count = sum(p.numel() for p in lora_parameters(backbone, "task").values())
    assert count == lora_update_parameter_count(backbone, 4) > 0
    assert count == sum(p.numel() for p in backbone.parameters() if p.requires_grad)


def test_vit_adapter_size_by_hand():
    backbone = apply_lora(build("vit-tiny"), LoraConfig(rank=4), "task")
    # 4 layers x 4 projections (32 -> 32) x rank 4 x (32 + 32)
    assert sum(p.numel() for p in lora_parameters(backbone, "task").values()) == 4 * 4 * 4 * 64


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("segformer-tiny", {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ("vit-tiny", {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ("resnet18", {"conv1", "conv2", "0"}),
    ],
)
def test_default_targets_are_the_attention_projections_or_convolutions(name, expected):
    backbone = apply_lora(build(name), LoraConfig(), "task")
    adapted = {n for n, m in backbone.named_modules() if isinstance(m, peft_lora.LoraLayer)}
    assert {n.rsplit(".", 1)[-1] for n in adapted} == expected
    if name == "resnet18":
        convs = {n for n, m in build(name).named_modules() if isinstance(m, nn.Conv2d)}
        assert adapted == convs  # every convolution, the shortcut 1x1 convs included


@pytest.mark.parametrize("name", ["r3d-tiny", "r2plus1d-tiny"])
def test_video_backbones_get_peft_conv3d_adapters(name):
    backbone = apply_lora(build(name), LoraConfig(rank=2), "task")
    layers = [m for m in backbone.modules() if isinstance(m, peft_lora.LoraLayer)]
    convs = [m for m in build(name).modules() if isinstance(m, nn.Conv3d)]
    assert len(layers) == len(convs) and all(isinstance(m, peft_lora.Conv3d) for m in layers)


def test_conv3d_subclasses_are_made_plain_without_changing_outputs():
    torch.manual_seed(0)
    model = r3d_18().eval()
    with pytest.raises(ValueError, match="Conv3DSimple: a Conv subclass peft cannot copy"):
        check_lora_targets(model, ("conv1.0",))
    x = torch.randn(1, 3, 2, 16, 16)
    with torch.no_grad():
        before = model(x)
        assert plain_conv3d(model) == 16  # 8 blocks x 2 convolutions
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert all(type(m) is nn.Conv3d for m in model.modules() if isinstance(m, nn.Conv3d))
    check_lora_targets(model, ("conv1.0",))


def test_batch_norm_is_frozen_so_samples_never_mix():
    backbone = apply_lora(build("resnet18"), LoraConfig(), "task").train()
    assert not find_batch_norms(backbone)
    assert isinstance(backbone.model.bn1, FrozenBatchNorm)
    x = batch(backbone, 3)
    other = x.clone()
    other[1:] += 1.0
    stats = base_state(backbone)
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward_embed(x)[0], backbone.forward_embed(other)[0])
    after = base_state(backbone)
    assert all(torch.equal(v, after[k]) for k, v in stats.items())


@pytest.mark.parametrize("name", TINY)
def test_adapter_state_round_trips_into_a_fresh_model(name):
    trained = apply_lora(build(name), LoraConfig(rank=4, seed=1), "site_a")
    with torch.no_grad():  # stand-in for training: every LoRA tensor gets new values
        for parameter in lora_parameters(trained, "site_a").values():
            parameter.normal_(std=0.05)
    state = lora_state_dict(trained, "site_a")
    assert all("site_a" not in key for key in state)
    # the format of peft's own get_peft_model_state_dict
    reference = get_peft_model_state_dict(trained, adapter_name="site_a")
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
    wire = safetensors_load(safetensors_save(state))  # bytes, as over the network
    fresh = apply_lora(build(name), LoraConfig(rank=4, seed=2), "server")
    x = batch(trained)
    with torch.no_grad():
        assert not torch.allclose(fresh.eval().forward_embed(x), trained.eval().forward_embed(x))
        load_lora_state_dict(fresh, wire, "server")
        assert torch.equal(fresh.forward_embed(x), trained.forward_embed(x))


def test_strict_loading_lists_every_problem_and_loads_nothing():
    backbone = apply_lora(build("vit-tiny"), LoraConfig(rank=4), "task")
    state = lora_state_dict(backbone, "task")
    keys = sorted(state)
    before = lora_state_dict(backbone, "task")
    broken = {k: torch.ones_like(v) for k, v in state.items()}
    del broken[keys[0]]
    broken["model.layers.9.attention.q_proj.lora_A.weight"] = torch.zeros(4, 32)
    broken[keys[1]] = torch.zeros(8, 32)
    broken[keys[2]] = torch.full_like(state[keys[2]], float("nan"))
    with pytest.raises(AdapterStateError) as err:
        load_lora_state_dict(backbone, broken, "task")
    message = str(err.value)
    assert f"missing keys (1): {keys[0]}" in message
    assert "unexpected keys (1): model.layers.9.attention.q_proj.lora_A.weight" in message
    assert f"{keys[1]}: shape (8, 32), expected {tuple(state[keys[1]].shape)}" in message
    assert f"{keys[2]}: contains NaN or Inf" in message
    after = lora_state_dict(backbone, "task")
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_rank_mismatch_between_sites_is_refused():
    state = lora_state_dict(apply_lora(build("vit-tiny"), LoraConfig(rank=2), "task"), "task")
    other = apply_lora(build("vit-tiny"), LoraConfig(rank=4), "task")
    with pytest.raises(AdapterStateError, match=r"shape \(2, 32\), expected \(4, 32\)"):
        load_lora_state_dict(other, state, "task")


def test_target_errors_name_the_module_and_the_fix():
    backbone = build("segformer-tiny")
    with pytest.raises(ValueError) as err:
        apply_lora(backbone, LoraConfig(target_modules=["q_proj", "dwconv.dwconv", "query"]), "task")
    message = str(err.value)
    assert "'dwconv.dwconv' matches 4 module(s) that cannot take LoRA" in message
    assert "grouped/depthwise convolution, groups=16" in message
    assert "'query' matches no module; Linear/Conv layer names end in: " in message and "q_proj" in message
    assert "'q_proj'" not in message
    assert adapter_names(backbone) == []  # nothing injected


def test_custom_targets_are_used():
    backbone = apply_lora(build("vit-tiny"), LoraConfig(target_modules=["q_proj", "v_proj"]), "task")
    adapted = {
        n.rsplit(".", 1)[-1] for n, m in backbone.named_modules() if isinstance(m, peft_lora.LoraLayer)
    }
    assert adapted == {"q_proj", "v_proj"}


def test_adapter_names_are_checked():
    backbone = apply_lora(build("vit-tiny"), LoraConfig(), "view")
    with pytest.raises(ValueError, match="already has a LoRA adapter 'view'"):
        apply_lora(backbone, LoraConfig(), "view")
    with pytest.raises(ValueError, match="no dots"):
        apply_lora(backbone, LoraConfig(), "lv.seg")
    with pytest.raises(ValueError, match="no LoRA adapter 'age'; its adapters: view"):
        lora_state_dict(backbone, "age")


def test_adapters_with_overlapping_names_stay_separate():
    backbone = apply_lora(build("vit-tiny"), LoraConfig(rank=2), "a")
    apply_lora(backbone, LoraConfig(rank=4), "ab")
    assert adapter_names(backbone) == ["a", "ab"]
    a, ab = lora_state_dict(backbone, "a"), lora_state_dict(backbone, "ab")
    assert a.keys() == ab.keys()
    assert all(v.shape[0] == 2 for k, v in a.items() if "lora_A" in k)
    assert all(v.shape[0] == 4 for k, v in ab.items() if "lora_A" in k)


def test_activation_switches_which_adapter_trains():
    backbone = apply_lora(build("vit-tiny"), LoraConfig(), "first")
    apply_lora(backbone, LoraConfig(), "second")
    second = {id(p) for p in lora_parameters(backbone, "second").values()}
    assert {id(p) for p in backbone.parameters() if p.requires_grad} == second
    set_active_adapter(backbone, "first")
    first = {id(p) for p in lora_parameters(backbone, "first").values()}
    assert {id(p) for p in backbone.parameters() if p.requires_grad} == first


def test_adapter_init_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.get_rng_state()
    one = lora_state_dict(apply_lora(build("vit-tiny"), LoraConfig(seed=5), "task"), "task")
    two = lora_state_dict(apply_lora(build("vit-tiny"), LoraConfig(seed=5), "task"), "task")
    three = lora_state_dict(apply_lora(build("vit-tiny"), LoraConfig(seed=6), "task"), "task")
    assert torch.equal(torch.get_rng_state(), state)
    key = "model.layers.0.attention.q_proj.lora_A.weight"
    assert torch.equal(one[key], two[key]) and not torch.equal(one[key], three[key])


@pytest.mark.parametrize("name", ["resnet18", "segformer-tiny"])
def test_base_tensors_keep_their_names_under_lora(name):
    """peft nests an adapted layer's weights under ``base_layer``; dropping that and the LoRA
    tensors gives back the plain backbone's state dict (frozen BatchNorm keeps BatchNorm's keys)."""
    plain = build(name).state_dict()
    adapted = apply_lora(build(name), LoraConfig(), "task").state_dict()
    base = {k.replace(".base_layer.", "."): v for k, v in adapted.items() if ".lora_" not in k}
    assert base.keys() == plain.keys()
    assert all(torch.equal(base[k], plain[k]) for k in plain)
