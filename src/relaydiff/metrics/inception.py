"""Inception-v3 exactly as the standard FID uses it.

This is the graph of TensorFlow's ``inception-2015-12-05`` (``classify_image_graph_def.pb``) in the
form NVIDIA ported it to PyTorch for StyleGAN2-ADA/StyleGAN3/EDM: every convolution is
``conv (no bias) → batch norm without scale (ε = 1e-3) → ReLU``, the average pools exclude the
padding, and the last block pools with a max pool (a quirk of the TF graph). Module names follow
the TF scopes (``layers.mixed_6.conv`` is ``mixed_6/conv``), so the port's tensors load by name.

Preprocessing is the graph's own: uint8 RGB → float → TF-1 bilinear resize to 299×299
(``align_corners=False`` without half-pixel centres: output pixel ``i`` samples input position
``i·H/299``, clamped at the border) → ``(x − 128) / 128``.

Outputs (:class:`InceptionFeatures`):
- ``pool``: ``pool_3`` (2048), the FID/KID/P&R features;
- ``spatial``: the first 7 channels of ``mixed_6/conv`` (17×17), flattened in TF's NHWC order
  (2023 values), the sFID features of ADM (Nash et al. 2021);
- ``logits``: ``pool · Wᵀ`` of the 1008-way head without its bias (what both StyleGAN3 and ADM feed
  to the softmax of the Inception Score), or ``None`` when the weights carry no head.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

RESOLUTION = 299
POOL_DIM = 2048
SPATIAL_CHANNELS = 7
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17
NUM_LOGITS = 1008
BN_EPS = 1e-3


class InceptionFeatures(NamedTuple):
    """Features of one batch: ``pool`` (N, 2048), ``spatial`` (N, 2023), ``logits`` (N, 1008)."""

    pool: torch.Tensor
    spatial: torch.Tensor
    logits: torch.Tensor | None


class Conv(nn.Module):
    """``relu(batchnorm(conv(x)))`` with TF's scale-free batch norm, folded into one convolution.

    ``y = (W∗x − mean)/√(var+ε) + beta`` is evaluated as
    ``(W/√(var+ε))∗x + (beta − mean/√(var+ε))``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = padding
        self.register_buffer("weight", torch.zeros(c_out, c_in, kh, kw))
        self.register_buffer("beta", torch.zeros(c_out))
        self.register_buffer("mean", torch.zeros(c_out))
        self.register_buffer("var", torch.ones(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(self.var + BN_EPS)
        weight = (self.weight * scale[:, None, None, None]).to(x.dtype)
        bias = (self.beta - self.mean * scale).to(x.dtype)
        return F.relu(F.conv2d(x, weight, bias, self.stride, self.padding))


class AvgPool(nn.Module):
    """3×3 average pool, stride 1, padding 1, padded positions not counted (TF ``SAME``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class MaxPool(nn.Module):
    """3×3 max pool with the given stride (padding 1 when the stride is 1, TF ``SAME``)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, self.stride, 1 if self.stride == 1 else 0)


def _tower(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


class Mixed35(nn.Module):
    """``mixed``, ``mixed_1``, ``mixed_2`` (35×35): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | pool→1×1."""

    def __init__(self, c_in: int, c_pool: int) -> None:
        super().__init__()
        self.conv = Conv(c_in, 64, 1)
        self.tower = _tower(("conv", Conv(c_in, 48, 1)), ("conv_1", Conv(48, 64, 5, padding=2)))
        self.tower_1 = _tower(("conv", Conv(c_in, 64, 1)), ("conv_1", Conv(64, 96, 3, padding=1)),
                              ("conv_2", Conv(96, 96, 3, padding=1)))
        self.tower_2 = _tower(("pool", AvgPool()), ("conv", Conv(c_in, c_pool, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class Reduce35(nn.Module):
    """``mixed_3``: 35×35 → 17×17 (stride-2 3×3 | 1×1→3×3→stride-2 3×3 | max pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = Conv(288, 384, 3, stride=2)
        self.tower = _tower(("conv", Conv(288, 64, 1)), ("conv_1", Conv(64, 96, 3, padding=1)),
                            ("conv_2", Conv(96, 96, 3, stride=2)))
        self.pool = MaxPool(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class Mixed17(nn.Module):
    """``mixed_4`` … ``mixed_7`` (17×17) with factorised 1×7/7×1 towers of width ``c7``."""

    def __init__(self, c7: int) -> None:
        super().__init__()
        row, col = {"kernel": (1, 7), "padding": (0, 3)}, {"kernel": (7, 1), "padding": (3, 0)}
        self.conv = Conv(768, 192, 1)
        self.tower = _tower(("conv", Conv(768, c7, 1)), ("conv_1", Conv(c7, c7, **row)),
                            ("conv_2", Conv(c7, 192, **col)))
        self.tower_1 = _tower(("conv", Conv(768, c7, 1)), ("conv_1", Conv(c7, c7, **col)),
                              ("conv_2", Conv(c7, c7, **row)), ("conv_3", Conv(c7, c7, **col)),
                              ("conv_4", Conv(c7, 192, **row)))
        self.tower_2 = _tower(("pool", AvgPool()), ("conv", Conv(768, 192, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class Reduce17(nn.Module):
    """``mixed_8``: 17×17 → 8×8."""

    def __init__(self) -> None:
        super().__init__()
        self.tower = _tower(("conv", Conv(768, 192, 1)), ("conv_1", Conv(192, 320, 3, stride=2)))
        self.tower_1 = _tower(("conv", Conv(768, 192, 1)),
                              ("conv_1", Conv(192, 192, (1, 7), padding=(0, 3))),
                              ("conv_2", Conv(192, 192, (7, 1), padding=(3, 0))),
                              ("conv_3", Conv(192, 192, 3, stride=2)))
        self.pool = MaxPool(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class Mixed8(nn.Module):
    """``mixed_9``, ``mixed_10`` (8×8) with split 1×3/3×1 outputs; ``pool`` is the tower-2 pool."""

    def __init__(self, c_in: int, pool: nn.Module) -> None:
        super().__init__()
        self.conv = Conv(c_in, 320, 1)
        self.tower_conv = Conv(c_in, 384, 1)
        self.tower_mixed_conv = Conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = Conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = Conv(c_in, 448, 1)
        self.tower_1_conv_1 = Conv(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = Conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = Conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = pool
        self.tower_2_conv = Conv(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], 1)


def _resize_tf_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF-1 ``ResizeBilinear`` as NVIDIA's port computes it: an identity affine grid shifted by
    ``1/W − 1/size`` (so output ``i`` samples input ``i·W/size``), border-clamped bilinear."""
    n, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1 / w - 1 / size], [0.0, 1.0, 1 / h - 1 / size]],
                         device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``N×3×H×W`` in ``[0, 255]`` → float32 ``N×3×299×299`` in ``[−1, 127/128]``.

    TF-1 bilinear resize (see the module docstring), then ``(x − 128)/128``.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"Inception input must be uint8 images in [0, 255], got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Inception input must be N×3×H×W RGB, got shape {tuple(images.shape)}")
    x = images.to(torch.float32)
    if x.shape[-2:] != (RESOLUTION, RESOLUTION):
        x = _resize_tf_bilinear(x, RESOLUTION)
    return (x - 128) / 128


class InceptionV3(nn.Module):
    """The FID Inception-v3 (see the module docstring); ``head=True`` adds the 1008-way logits."""

    def __init__(self, head: bool = False) -> None:
        super().__init__()
        self.layers = nn.Sequential(OrderedDict([
            ("conv", Conv(3, 32, 3, stride=2)),
            ("conv_1", Conv(32, 32, 3)),
            ("conv_2", Conv(32, 64, 3, padding=1)),
            ("pool0", MaxPool(2)),
            ("conv_3", Conv(64, 80, 1)),
            ("conv_4", Conv(80, 192, 3)),
            ("pool1", MaxPool(2)),
            ("mixed", Mixed35(192, 32)),
            ("mixed_1", Mixed35(256, 64)),
            ("mixed_2", Mixed35(288, 64)),
            ("mixed_3", Reduce35()),
            ("mixed_4", Mixed17(128)),
            ("mixed_5", Mixed17(160)),
            ("mixed_6", Mixed17(160)),
            ("mixed_7", Mixed17(192)),
            ("mixed_8", Reduce17()),
            ("mixed_9", Mixed8(1280, AvgPool())),
            ("mixed_10", Mixed8(2048, MaxPool(1))),
        ]))
        self.output = nn.Linear(POOL_DIM, NUM_LOGITS, bias=False) if head else None
        self.requires_grad_(False)

    @property
    def has_logits(self) -> bool:
        return self.output is not None

    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        """Features of uint8 ``N×3×H×W`` images (any size; resized to 299 like the reference)."""
        x = preprocess(images.to(self.layers.conv.weight.device))
        x = x.contiguous(memory_format=torch.channels_last)  # ~1.7× faster convolutions on CPU
        spatial = None
        for name, layer in self.layers.named_children():
            x = layer(x)
            if name == "mixed_6":
                # The block's first 192 channels are its `conv` branch: `mixed_6/conv`.
                spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(x), -1)
        pool = x.mean(dim=(2, 3))
        logits = self.output(pool) if self.output is not None else None
        return InceptionFeatures(pool, spatial, logits)
