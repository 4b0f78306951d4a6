"""The Backbone contract shared by models, SSL methods and tasks.

A backbone wraps one library network (``self.model``: a torchvision ResNet / VideoResNet or a
transformers SegformerModel / ViTModel) and exposes two entry points:

- :meth:`Backbone.forward_embed`: (B, C, H, W) or (B, C, T, H, W) -> (B, embed_dim), a pooled
  global feature (``forward`` is the same);
- :meth:`Backbone.forward_features`: (B, C, H, W) -> a list of feature maps
  (B, C_i, ceil(H / s_i), ceil(W / s_i)) with ``C_i = feature_channels[i]`` and
  ``s_i = feature_strides[i]``; clip backbones have no spatial neck and raise ValueError.

Inputs are float tensors with ``in_channels`` channels (1: grayscale echo). Both entry points
check the input and name the expected shape in their error.

LoRA (:mod:`fedecho.adapters`) injects adapters *in place* into ``self.model``'s layers, so a
backbone keeps its class and both entry points after adaptation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

__all__ = ["Backbone", "InputKind"]

InputKind = Literal["image", "clip"]


def _identity(key: str) -> str:
    return key


class Backbone(nn.Module, ABC):
    """Base class of every FedEcho backbone (see the module docstring for shapes).

    Subclasses build ``self.model`` and implement :meth:`_embed` and, if they have a spatial
    neck, :meth:`_features`. Weights files (:mod:`fedecho.models.weights`) load into
    ``self.model``, so torchvision / transformers checkpoints match key for key.
    """

    #: State-dict key (in ``self.model``) of the first convolution's weight, whose input channels
    #: :mod:`fedecho.models.weights` adapts (RGB -> grayscale by summing).
    first_conv_key: str = ""
    #: Key prefixes (in ``self.model``) of classification heads that published checkpoints carry
    #: and this backbone drops (e.g. ResNet's ``fc.``); such keys are skipped, not errors.
    head_weight_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        name: str,
        model: nn.Module,
        input_kind: InputKind,
        in_channels: int,
        embed_dim: int,
        feature_channels: tuple[int, ...],
        feature_strides: tuple[int, ...],
        lora_targets: tuple[str, ...],
    ) -> None:
        super().__init__()
        if len(feature_channels) != len(feature_strides):
            raise ValueError(
                f"{name}: feature_channels {feature_channels} and feature_strides {feature_strides} "
                f"must have the same length"
            )
        self.name = name
        self.model = model
        self.input_kind: InputKind = input_kind
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.feature_channels = tuple(feature_channels)
        self.feature_strides = tuple(feature_strides)
        self.lora_targets = tuple(lora_targets)

    @property
    def has_spatial_neck(self) -> bool:
        """True when :meth:`forward_features` returns feature maps."""
        return bool(self.feature_channels)

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError unless ``x`` is a float batch of this backbone's kind and channels."""
        layout = "(B, C, H, W)" if self.input_kind == "image" else "(B, C, T, H, W)"
        rank = 4 if self.input_kind == "image" else 5
        expected = f"a float {self.input_kind} batch {layout} with C={self.in_channels}"
        if not isinstance(x, Tensor):
            raise ValueError(f"{self.name} expects {expected}; got {type(x).__name__}")
        if x.dim() != rank:
            hint = ""
            if self.input_kind == "image" and x.dim() == 5:
                hint = " (a clip: encode its frames one by one, or use a clip backbone: r3d18, r2plus1d18)"
            elif self.input_kind == "clip" and x.dim() == 4:
                hint = (
                    " (an image? add a time axis or use an image backbone; "
                    "a clip without channel axis? x.unsqueeze(1))"
                )
            elif x.dim() == rank - 1:
                hint = " (add the channel axis: x.unsqueeze(1))"
            raise ValueError(f"{self.name} expects {expected}; got shape {tuple(x.shape)}{hint}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name} expects {expected}; got {x.shape[1]} channels in shape {tuple(x.shape)}"
                f" (set BackboneConfig.in_channels={x.shape[1]} or convert the input)"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"{self.name} expects {expected}; got dtype {x.dtype} (convert to float and normalise)"
            )

    def forward_embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) or (B, C, T, H, W) -> (B, embed_dim) pooled global features."""
        self.check_input(x)
        return self._embed(x)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(B, C, H, W) -> [(B, feature_channels[i], ceil(H / s_i), ceil(W / s_i))]."""
        if not self.has_spatial_neck:
            raise ValueError(
                f"{self.name} has no spatial neck (feature_channels=()): use forward_embed, or a "
                f"backbone with feature maps (segformer-b0, resnet18, vit-s16)"
            )
        self.check_input(x)
        return self._features(x)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`forward_embed`."""
        return self.forward_embed(x)

    @abstractmethod
    def _embed(self, x: Tensor) -> Tensor:
        """Checked input -> (B, embed_dim)."""

    def _features(self, x: Tensor) -> list[Tensor]:
        """Checked input -> feature maps; backbones with a spatial neck override this."""
        raise NotImplementedError(f"{type(self).__name__} declares feature maps but has no _features")

    def checkpoint_key_renamer(self) -> Callable[[str], str]:
        """A function mapping a checkpoint key to this backbone's naming (identity here; the
        transformers backbones map keys of older transformers releases)."""
        return _identity

    def adapt_weight(self, key: str, value: Tensor, target: Tensor) -> Tensor | None:
        """Adapt a checkpoint tensor whose shape differs from ``target``; None if impossible.

        Base rule: an RGB first convolution (C_out, 3, *k) loaded into a grayscale backbone
        (C_out, 1, *k) becomes the sum of its three input-channel kernels, which gives exactly the
        RGB network's output on a gray image replicated into three channels.
        """
        if (
            key == self.first_conv_key
            and value.dim() == target.dim() >= 3
            and value.shape[1] == 3
            and target.shape[1] == 1
            and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]
        ):
            return value.sum(dim=1, keepdim=True)
        return None

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, input_kind={self.input_kind!r}, in_channels={self.in_channels}, "
            f"embed_dim={self.embed_dim}, feature_channels={self.feature_channels}, "
            f"feature_strides={self.feature_strides}"
        )
