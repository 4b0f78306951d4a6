"""Backbones: registry, contract shapes, input checks, norms, weights files, configs."""

from __future__ import annotations

import math
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.video.resnet import BasicBlock as VideoBasicBlock
from torchvision.models.video.resnet import BasicStem, Conv2Plus1D, Conv3DSimple, R2Plus1dStem, VideoResNet

from fedecho.config.model import BACKBONE_NAMES, BackboneConfig, LoraConfig
from fedecho.models import (
    BACKBONES,
    Backbone,
    FrozenBatchNorm,
    WeightsFileError,
    build_backbone,
    find_batch_norms,
    freeze_batch_norms,
    load_weights,
    replace_norms,
)
from fedecho.models.norm import group_count, make_norm
from fedecho.models.video_cnn import SizedVideoResNet
from fedecho.models.vit import feature_layers

IMAGE_TINY = ["segformer-tiny", "vit-tiny", "resnet18"]
CLIP_TINY = ["r3d-tiny", "r2plus1d-tiny"]
FULL = ["segformer-b0", "segformer-b2", "resnet18", "r3d18", "r2plus1d18", "vit-s16"]


def build(name: str, **kwargs) -> Backbone:
    kwargs.setdefault("image_size", 32)
    return build_backbone(BackboneConfig(name=name, **kwargs))


def image(batch: int = 2, height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, height, width, generator=torch.Generator().manual_seed(seed))


def clip(batch: int = 2, frames: int = 4, side: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, frames, side, side, generator=torch.Generator().manual_seed(seed))


# --- registry and configs -------------------------------------------------------------------------


def test_registry_holds_exactly_the_config_names():
    assert BACKBONES.names() == sorted(BACKBONE_NAMES)


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="resnet50") as err:
        BackboneConfig(name="resnet50")
    for name in BACKBONE_NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="valid backbones: .*r3d18.*vit-s16"):
        BACKBONES.get("resnet50")


@pytest.mark.parametrize(
    ("kwargs", "fix"),
    [
        ({"in_channels": 0}, "positive integer"),
        ({"norm": "bn"}, "group' for DP"),
        ({"name": "vit-s16", "image_size": 100}, "use e.g. 96"),
        ({"weights": "model.bin"}, r"\.safetensors"),
        ({"weights": ""}, "local file path"),
        ({"overrides": ["depths"]}, "dict with string keys"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_backbone_config_errors_name_the_fix(kwargs, fix):
    with pytest.raises(ValueError, match=fix):
        BackboneConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "fix"),
    [
        ({"rank": 0}, "positive integer"),
        ({"alpha": -1}, "positive number"),
        ({"dropout": 1.0}, r"\[0, 1\)"),
        ({"target_modules": "q_proj"}, r"\['q_proj'\]"),
        ({"target_modules": []}, "non-empty list"),
    ],
)
def test_lora_config_errors_name_the_fix(kwargs, fix):
    with pytest.raises(ValueError, match=fix):
        LoraConfig(**kwargs)


def test_lora_config_normalises_targets_to_a_tuple():
    assert LoraConfig(target_modules=["q_proj", "v_proj"]).target_modules == ("q_proj", "v_proj")


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("segformer-tiny", {"depth": [1, 1, 1, 1]}, "unknown override 'depth'.*depths"),
        ("vit-tiny", {"num_channels": 3}, "BackboneConfig.in_channels"),
        ("resnet18", {"width": 32}, "only size override is 'layers'"),
        ("r3d-tiny", {"layers": [1, 1, 1]}, "four positive integers"),
        ("r3d-tiny", {"depth": 2}, "size overrides are 'layers' .* and 'width'"),
        ("r2plus1d-tiny", {"width": 0}, r"overrides\['width'\]=0 must be a positive integer"),
    ],
)
def test_unknown_or_owned_overrides_are_refused(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        build(name, overrides=overrides)


def test_overrides_change_the_size():
    backbone = build(
        "segformer-tiny", overrides={"hidden_sizes": [8, 16, 24, 40], "num_attention_heads": [1, 1, 1, 1]}
    )
    assert backbone.feature_channels == (8, 16, 24, 40) and backbone.embed_dim == 40
    resnet = build("resnet18", overrides={"layers": [1, 1, 1, 1]})
    assert len(resnet.model.layer3) == 1


@pytest.mark.parametrize("name", CLIP_TINY)
def test_video_width_override_narrows_every_stage(name):
    full = build(name)
    narrow = build(name, overrides={"width": 16})
    assert (full.embed_dim, narrow.embed_dim) == (512, 128)
    channels = [narrow.model.get_submodule(f"layer{i}")[-1].conv2[1].num_features for i in range(1, 5)]
    assert channels == [16, 32, 64, 128]
    params = sum(p.numel() for p in narrow.parameters())
    assert params * 12 < sum(p.numel() for p in full.parameters())
    clip = torch.randn(2, 1, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    assert narrow.forward_embed(clip).shape == (2, 128)


@pytest.mark.parametrize(("kind", "conv", "stem"), [("r3d", Conv3DSimple, BasicStem), ("r2plus1d", Conv2Plus1D, R2Plus1dStem)])
def test_sized_video_resnet_at_width_64_is_torchvisions(kind, conv, stem):
    torch.manual_seed(3)
    reference = VideoResNet(VideoBasicBlock, [conv] * 4, [1, 1, 1, 1], stem).state_dict()
    torch.manual_seed(3)
    sized = SizedVideoResNet(kind, [1, 1, 1, 1], 64).state_dict()
    assert list(sized) == list(reference)
    assert all(torch.equal(sized[key], reference[key]) for key in reference)


# --- contract shapes ------------------------------------------------------------------------------


def _check_image_contract(backbone: Backbone, height: int, width: int) -> None:
    x = image(2, height, width)
    embed = backbone.forward_embed(x)
    assert embed.shape == (2, backbone.embed_dim) and embed.dtype == torch.float32
    assert torch.equal(backbone(x), embed)
    maps = backbone.forward_features(x)
    assert backbone.has_spatial_neck and len(maps) == len(backbone.feature_channels) == 4
    for fmap, channels, stride in zip(maps, backbone.feature_channels, backbone.feature_strides, strict=True):
        assert fmap.shape == (2, channels, math.ceil(height / stride), math.ceil(width / stride))


@pytest.mark.parametrize("name", IMAGE_TINY)
def test_image_backbone_contract(name):
    backbone = build(name).eval()
    assert backbone.input_kind == "image" and backbone.in_channels == 1
    _check_image_contract(backbone, 64, 96)


@pytest.mark.parametrize("name", CLIP_TINY)
def test_clip_backbone_contract(name):
    backbone = build(name).eval()
    assert backbone.input_kind == "clip" and backbone.embed_dim == 512
    assert not backbone.has_spatial_neck and backbone.feature_channels == backbone.feature_strides == ()
    x = clip()
    assert backbone.forward_embed(x).shape == (2, 512)
    with pytest.raises(ValueError, match="no spatial neck.*forward_embed"):
        backbone.forward_features(x)


@pytest.mark.parametrize("name", FULL)
def test_full_size_backbones_have_the_published_sizes(name):
    backbone = build(name, image_size=224 if name == "vit-s16" else 112).eval()
    expected = {
        "segformer-b0": ((32, 64, 160, 256), (4, 8, 16, 32), 256),
        "segformer-b2": ((64, 128, 320, 512), (4, 8, 16, 32), 512),
        "resnet18": ((64, 128, 256, 512), (4, 8, 16, 32), 512),
        "vit-s16": ((384,) * 4, (16,) * 4, 384),
        "r3d18": ((), (), 512),
        "r2plus1d18": ((), (), 512),
    }[name]
    assert (backbone.feature_channels, backbone.feature_strides, backbone.embed_dim) == expected
    with torch.no_grad():
        if backbone.input_kind == "clip":
            assert backbone.forward_embed(clip(1, 2, 16)).shape == (1, 512)
        else:
            _check_image_contract(backbone, 32, 64)
    if name == "vit-s16":
        config = backbone.model.config
        assert (config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
            12,
            6,
            1536,
        )


def test_non_multiple_sides_give_ceil_sized_maps():
    for name in ("segformer-tiny", "resnet18"):
        _check_image_contract(build(name).eval(), 66, 90)


def test_vit_interpolates_position_embeddings_and_picks_evenly_spaced_layers():
    assert feature_layers(12) == (3, 6, 9, 12) and feature_layers(4) == (1, 2, 3, 4)
    backbone = build("vit-tiny", image_size=32).eval()  # 2 x 2 position grid
    x = image(2, 48, 80)  # 3 x 5 patches: needs interpolation, rows != cols
    maps = backbone.forward_features(x)
    states = backbone.model(
        pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True
    ).hidden_states
    for fmap, layer in zip(maps, (1, 2, 3, 4), strict=True):
        assert fmap.shape == (2, 32, 3, 5)
        for row, col in ((0, 0), (1, 3), (2, 4)):  # token 1 + row * cols + col is patch (row, col)
            torch.testing.assert_close(fmap[:, :, row, col], states[layer][:, 1 + row * 5 + col])
    embed = backbone.forward_embed(x)
    torch.testing.assert_close(
        embed, backbone.model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]
    )
    with pytest.raises(ValueError, match="multiples of 16.*48x64"):
        backbone.forward_embed(image(1, 40, 64))


def test_input_errors_name_the_expected_layout():
    backbone = build("resnet18")
    with pytest.raises(ValueError, match=re.escape("(B, C, H, W) with C=1") + ".*3 channels.*in_channels=3"):
        backbone.forward_embed(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="a clip: encode its frames"):
        backbone.forward_embed(clip())
    with pytest.raises(ValueError, match="add the channel axis"):
        backbone.forward_embed(torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match="uint8.*convert to float"):
        backbone.forward_embed(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"an image\? add a time axis.*x.unsqueeze\(1\)"):
        build("r3d-tiny").forward_embed(image())


def test_in_channels_is_honoured():
    backbone = build("vit-tiny", in_channels=3)
    assert backbone.forward_embed(torch.zeros(1, 3, 32, 32)).shape == (1, 32)


def test_build_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.get_rng_state()
    first, second = build("segformer-tiny", seed=3), build("segformer-tiny", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
    other = build("segformer-tiny", seed=4)
    assert not torch.equal(
        first.model.stages[0].patch_embeddings.proj.weight, other.model.stages[0].patch_embeddings.proj.weight
    )


# --- norms ----------------------------------------------------------------------------------------


def test_group_count_is_the_largest_divisor_up_to_32():
    assert [group_count(c) for c in (64, 45, 144, 921, 7, 1)] == [32, 15, 24, 3, 7, 1]


@pytest.mark.parametrize("name", ["resnet18", "r3d-tiny", "r2plus1d-tiny"])
def test_group_norm_leaves_no_batch_norm(name):
    reference = build(name)
    backbone = build(name, norm="group")
    assert find_batch_norms(reference) and not find_batch_norms(backbone)
    assert len([m for m in backbone.modules() if isinstance(m, nn.GroupNorm)]) == len(
        find_batch_norms(reference)
    )


@pytest.mark.parametrize(
    ("kind", "cls", "groups"), [("instance", nn.InstanceNorm2d, None), ("layer", nn.GroupNorm, 1)]
)
def test_other_per_sample_norms(kind, cls, groups):
    backbone = build("resnet18", norm=kind)
    assert not find_batch_norms(backbone) and isinstance(backbone.model.bn1, cls)
    if groups is not None:
        assert backbone.model.bn1.num_groups == groups


def test_per_sample_norms_do_not_mix_samples_in_training_mode():
    x = image(4, 32, 32)
    other = x.clone()
    other[1:] = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(9))
    for norm, mixes in (("batch", True), ("group", False)):
        backbone = build("resnet18", norm=norm).train()
        with torch.no_grad():
            same = torch.allclose(backbone.forward_embed(x)[0], backbone.forward_embed(other)[0], atol=1e-6)
        assert same is not mixes, norm


@pytest.mark.parametrize("name", ["vit-tiny", "segformer-tiny"])
def test_transformers_keep_their_layer_norms_whatever_norm_says(name):
    reference = build(name).eval()
    backbone = build(name, norm="group").eval()
    assert not find_batch_norms(backbone) and not any(isinstance(m, nn.GroupNorm) for m in backbone.modules())
    x = image(1, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone.forward_embed(x), reference.forward_embed(x))


def test_replace_norms_copies_the_affine_weights():
    module = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8))
    nn.init.normal_(module[1].weight)
    nn.init.normal_(module[1].bias)
    weight, bias = module[1].weight.detach().clone(), module[1].bias.detach().clone()
    replace_norms(module, "group")
    assert isinstance(module[1], nn.GroupNorm) and module[1].num_groups == 8
    assert torch.equal(module[1].weight, weight) and torch.equal(module[1].bias, bias)
    with pytest.raises(ValueError, match="unknown norm kind 'bn'"):
        make_norm("bn", 8, 2)


def test_frozen_batch_norm_is_eval_batch_norm_in_every_mode():
    bn = nn.BatchNorm3d(5)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.normal_(bn.weight)
    module = nn.Sequential(bn)
    x = torch.randn(3, 5, 2, 4, 4)
    expected = bn.eval()(x)
    freeze_batch_norms(module)
    assert isinstance(module[0], FrozenBatchNorm) and not find_batch_norms(module)
    assert module.state_dict().keys() == nn.Sequential(nn.BatchNorm3d(5)).state_dict().keys()
    assert list(module.parameters()) == []
    torch.testing.assert_close(module.train()(x), expected)
    # by hand for one element
    value = (x[1, 2, 0, 1, 3] - bn.running_mean[2]) / torch.sqrt(bn.running_var[2] + bn.eps) * bn.weight[
        2
    ] + bn.bias[2]
    torch.testing.assert_close(module(x)[1, 2, 0, 1, 3], value)


# --- weights files --------------------------------------------------------------------------------


def _rgb_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = tv_resnet18(weights=None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, so a wrong load shows
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_rgb_weights_load_into_a_grayscale_backbone_by_summing(tmp_path):
    rgb = _rgb_resnet()
    path = tmp_path / "resnet18_rgb.pth"
    torch.save(rgb.state_dict(), path)
    backbone = build("resnet18", weights=str(path)).eval()
    torch.testing.assert_close(backbone.model.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    # a gray image replicated into RGB gives the RGB network's features
    x = image(2, 64, 64)
    rgb.fc = nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward_embed(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)
    report = load_weights(backbone, path)
    assert report.adapted == ("conv1.weight",) and report.ignored == ("fc.bias", "fc.weight")


def test_own_state_dict_round_trips_through_safetensors_with_group_norm(tmp_path):
    source = build("resnet18", norm="group", seed=1).eval()
    path = tmp_path / "site.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))  # keys "model.*"
    loaded = build("resnet18", norm="group", seed=2, weights=str(path)).eval()
    x = image(2, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.forward_embed(x), source.forward_embed(x))


def test_batch_norm_file_into_group_norm_backbone_keeps_its_affine(tmp_path):
    rgb = _rgb_resnet()
    nn.init.normal_(rgb.bn1.weight)
    path = tmp_path / "rgb.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in rgb.state_dict().items()}}, path)
    backbone = build("resnet18", norm="group", weights=str(path))
    assert isinstance(backbone.model.bn1, nn.GroupNorm)
    assert torch.equal(backbone.model.bn1.weight, rgb.bn1.weight)


_LEGACY_SEGFORMER = [
    (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.", r"encoder.block.\1.\2."),
    (r"stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
    (r"attention\.q_proj", "attention.self.query"),
    (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"),
    (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
    (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
    (r"attention\.o_proj", "attention.output.dense"),
    (r"mlp\.fc1", "mlp.dense1"),
    (r"mlp\.fc2", "mlp.dense2"),
    (r"layernorm_before", "layer_norm_1"),
    (r"layernorm_after", "layer_norm_2"),
]


def test_legacy_transformers_segformer_checkpoint_loads(tmp_path):
    source = build("segformer-tiny", seed=5).eval()
    legacy = {}
    for key, value in source.model.state_dict().items():
        for pattern, replacement in _LEGACY_SEGFORMER:
            key = re.sub(pattern, replacement, key)
        legacy[f"segformer.{key}"] = value
    legacy["decode_head.classifier.weight"] = torch.zeros(4, 32, 1, 1)  # a semantic-segmentation checkpoint
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in legacy
    path = tmp_path / "mit.pt"
    torch.save(legacy, path)
    loaded = build("segformer-tiny", seed=6, weights=str(path)).eval()
    x = image(1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.forward_embed(x), source.forward_embed(x))


def test_vit_position_embeddings_are_resized_on_load(tmp_path):
    source = build("vit-tiny", image_size=32)  # 1 + 2 * 2 positions
    with torch.no_grad():
        source.model.embeddings.position_embeddings[:, 1:] = 0.25
    path = tmp_path / "vit.pt"
    torch.save(source.state_dict(), path)
    loaded = build("vit-tiny", image_size=64, weights=str(path))  # 1 + 4 * 4 positions
    positions = loaded.model.embeddings.position_embeddings
    assert positions.shape == (1, 17, 32)
    torch.testing.assert_close(positions[:, 1:], torch.full((1, 16, 32), 0.25))  # bicubic keeps constants
    assert torch.equal(positions[:, :1], source.model.embeddings.position_embeddings[:, :1])


def test_missing_weights_file_is_named(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsFileError, match=re.escape(str(path)) + ": weights file not found"):
        build("resnet18", weights=str(path))


def test_unreadable_weights_file_is_named(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsFileError, match=re.escape(str(path)) + ": not a readable weights file"):
        build("resnet18", weights=str(path))
    pickled = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), pickled)  # a whole module, not a state dict
    with pytest.raises(WeightsFileError, match="model.state_dict"):
        build("resnet18", weights=str(pickled))
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(WeightsFileError, match="no state dict found.*epoch"):
        build("resnet18", weights=str(empty))


def test_weights_of_another_network_list_every_problem(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(_rgb_resnet().state_dict(), path)
    with pytest.raises(WeightsFileError) as err:
        build("segformer-tiny", weights=str(path))
    message = str(err.value)
    assert str(path) in message and "'segformer-tiny'" in message
    assert "missing from the file" in message and "stages.0.blocks.0.attention.k_proj.bias" in message
    assert "unexpected in the file" in message and "layer1.0.conv1.weight" in message


def test_shape_mismatch_is_reported_with_both_shapes(tmp_path):
    source = build("resnet18", in_channels=2)
    path = tmp_path / "two_channels.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(
        WeightsFileError, match=re.escape("conv1.weight (64, 2, 7, 7) (model: (64, 1, 7, 7))")
    ):
        build("resnet18", weights=str(path))
