"""The ADM UNet (Dhariwal & Nichol 2021) in the parameter layout of EDM's ``DhariwalUNet``.

RDM uses this network for both stages (docs/networks.md). Layer names, shapes and the order of
operations follow EDM's ``training/networks.py`` (Karras et al. 2022), so a state dict of
EDM's ``EDMPrecond(DhariwalUNet)`` loads into ``relaydiff.precond.EDMPrecond(UNet(...))``
with ``strict=True`` and gives the same outputs (``tests/test_unet.py``). Differences are
in execution only: attention runs through ``scaled_dot_product_attention``, blocks can be
gradient-checkpointed, and the network can run in ``channels_last`` or under autocast.

Raw network ``F(x, c_noise, labels)`` of docs/method.md §1.1: ``x`` is the preconditioned input
``c_in·x_σ``, ``c_noise = ln(σ)/4``, ``labels`` one-hot ``(N, label_dim)`` or ``None``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import register
from .presets import UNET_PRESETS

_SKIP_INIT = contextvars.ContextVar("relaydiff_skip_init", default=False)


@contextlib.contextmanager
def uninitialized() -> Iterator[None]:
    """Build UNets (``unet``, ``song_unet``) with uninitialised weights (``torch.empty``, no
    random draws) inside the block; the toy network ignores it. For networks whose weights are
    loaded right after (a stage folder, a converted checkpoint), where drawing and writing
    initial values would be wasted time."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def skipping_init() -> bool:
    """Whether networks are being built inside :func:`uninitialized`."""
    return _SKIP_INIT.get()


@dataclass(frozen=True)
class Init:
    """How a layer's weights start: ``mode`` ``"uniform"`` (ADM's ``U(±1/√fan_in)``, EDM's
    kaiming-uniform × √(1/3), for weight and bias) or ``"xavier"`` (``U(±√(6/(fan_in+fan_out)))``
    for the weight, zero bias: the DDPM++/NCSN++ init), times ``scale`` (0: zero-initialised)."""

    mode: str = "uniform"
    scale: float = 1.0

    def apply(self, weight: torch.Tensor, bias: torch.Tensor | None, fan_in: int,
              fan_out: int) -> None:
        if skipping_init():
            return
        with torch.no_grad():
            if self.scale == 0:  # no random draws, so the other layers' draws do not move
                weight.zero_()
                if bias is not None:
                    bias.zero_()
            elif self.mode == "uniform":
                bound = self.scale / math.sqrt(fan_in)
                weight.uniform_(-bound, bound)
                if bias is not None:
                    bias.uniform_(-bound, bound)
            else:
                bound = self.scale * math.sqrt(6 / (fan_in + fan_out))
                weight.uniform_(-bound, bound)
                if bias is not None:
                    bias.zero_()


ADM_INIT, ADM_ZERO = Init("uniform"), Init("uniform", 0.0)
SONG_INIT, SONG_ZERO, SONG_ATTN = Init("xavier"), Init("xavier", 1e-5), Init("xavier", math.sqrt(0.2))


def _linear(in_features: int, out_features: int, *, bias: bool = True,
            init: Init = ADM_INIT) -> nn.Linear:
    if skipping_init():  # shapes from a meta-device layer, storage left uninitialised
        layer = nn.Linear(in_features, out_features, bias=bias, device="meta")
        layer.weight = nn.Parameter(torch.empty(layer.weight.shape))
        if bias:
            layer.bias = nn.Parameter(torch.empty(layer.bias.shape))
        return layer
    layer = nn.Linear(in_features, out_features, bias=bias)
    init.apply(layer.weight, layer.bias, in_features, out_features)
    return layer


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm with ``min(32, channels // 4)`` groups, as in EDM's ``GroupNorm``."""
    groups = min(32, channels // 4)
    if groups < 1 or channels % groups:
        raise ValueError(
            f"GroupNorm over {channels} channels needs a multiple of 4 below 128 and a multiple "
            "of 32 above; change model_channels or channel_mult"
        )
    return nn.GroupNorm(groups, channels, eps=eps)


class Conv2d(nn.Module):
    """A ``kernel×kernel`` convolution (``kernel = 0``: none) with optional 2× resampling.

    Resampling filters with ``f = r rᵀ / (Σr)²`` for the 1-D ``resample_filter`` ``r`` (ADM and
    DDPM++: ``[1, 1]``, a 2×2 box mean; NCSN++: ``[1, 3, 3, 1]``), kept as the buffer
    ``resample_filter`` (``1×1×k×k``) as in EDM: stride-2 depthwise filtering for ``down``, a
    stride-2 transposed depthwise filter of ``4·f`` for ``up``, before the convolution; with
    ``fused_resample`` the convolution comes first for ``down`` (and last for ``up``), with the
    padding of both in one.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[int] = (1, 1),
        fused_resample: bool = False,
        init: Init = ADM_INIT,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.padding = kernel // 2
        if kernel:
            new = torch.empty if skipping_init() else torch.zeros
            self.weight = nn.Parameter(new(out_channels, in_channels, kernel, kernel))
            self.bias = nn.Parameter(new(out_channels)) if bias else None
            init.apply(self.weight, self.bias, in_channels * kernel * kernel,
                       out_channels * kernel * kernel)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if up or down:
            r = torch.as_tensor(resample_filter, dtype=torch.float32)
            self.register_buffer("resample_filter", (torch.outer(r, r) / r.sum() ** 2)[None, None])
        else:
            self.resample_filter = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, f = self.weight, self.resample_filter
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and w is not None and (self.up or self.down):
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).to(x.dtype).tile(self.in_channels, 1, 1, 1),
                                       groups=self.in_channels, stride=2,
                                       padding=self.padding + f_pad)
                x = F.conv2d(x, w, self.bias)
            else:
                x = F.conv2d(x, w, padding=self.padding + f_pad)
                x = F.conv2d(x, f.to(x.dtype).tile(self.out_channels, 1, 1, 1),
                             groups=self.out_channels, stride=2)
                if self.bias is not None:
                    x = x + self.bias.reshape(1, -1, 1, 1)
            return x
        if f is not None:
            channels = x.shape[1]
            f = f.to(x.dtype).expand(channels, 1, *f.shape[-2:]).contiguous()
            if self.up:
                x = F.conv_transpose2d(x, f * 4, stride=2, groups=channels, padding=f_pad)
            else:
                x = F.conv2d(x, f, stride=2, groups=channels, padding=f_pad)
        if w is not None:
            x = F.conv2d(x, w, self.bias, padding=self.padding)
        return x


class UNetBlock(nn.Module):
    """EDM's unified residual block of ADM, DDPM++ and NCSN++, with optional self-attention.

    ``h = conv0(silu(norm0(x)))``; adaptive scale (ADM): ``h = silu(norm1(h)·(1+scale) + shift)``
    with ``(scale, shift) = affine(emb)``, else (DDPM++/NCSN++) ``h = silu(norm1(h + affine(emb)))``;
    ``y = (conv1(dropout(h)) + skip(x))·skip_scale``; with attention,
    ``y = (y + proj(MHA(norm2(y))))·skip_scale`` where ``qkv`` is laid out per head as
    ``[head][channel][q, k, v]`` (EDM's reshape order).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        up: bool = False,
        down: bool = False,
        num_heads: int = 0,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[int] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: Init = ADM_INIT,
        init_zero: Init = ADM_ZERO,
        init_attn: Init | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = num_heads
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        resample = {"resample_filter": resample_filter}
        self.norm0 = group_norm(in_channels, eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, init=init, **resample)
        self.affine = _linear(emb_channels, out_channels * (2 if adaptive_scale else 1), init=init)
        self.norm1 = group_norm(out_channels, eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, init=init_zero)
        self.skip: Conv2d | None = None
        if in_channels != out_channels or up or down:
            kernel = 1 if resample_proj or in_channels != out_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, init=init,
                               **resample)
        if num_heads:
            if out_channels % num_heads:
                raise ValueError(f"{out_channels} channels do not split into {num_heads} heads")
            self.norm2 = group_norm(out_channels, eps)
            self.qkv = Conv2d(out_channels, 3 * out_channels, 1, init=init_attn or init)
            self.proj = Conv2d(out_channels, out_channels, 1, init=init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = h + (self.skip(x) if self.skip is not None else x)
        if self.skip_scale != 1:
            x = x * self.skip_scale
        if self.num_heads:
            x = x + self.proj(self._attention(self.norm2(x)))
            if self.skip_scale != 1:
                x = x * self.skip_scale
        return x

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention ``softmax(qᵀk/√d)·v`` over the ``H·W`` positions."""
        n, c, height, width = x.shape
        qkv = self.qkv(x).reshape(n, self.num_heads, c // self.num_heads, 3, height * width)
        q, k, v = qkv.permute(3, 0, 1, 4, 2).contiguous().unbind(0)  # each (n, heads, HW, d)
        a = F.scaled_dot_product_attention(q, k, v)
        return a.transpose(-1, -2).reshape(n, c, height, width)


def noise_embedding(c_noise: torch.Tensor, channels: int) -> torch.Tensor:
    """ADM's sinusoidal embedding ``[cos(c·ω_j), sin(c·ω_j)]``, ``ω_j = 10⁻⁴^(j/(channels/2))``."""
    half = channels // 2
    freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float32, device=c_noise.device) / half)
    angles = torch.outer(c_noise.to(torch.float32), freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class UNet(nn.Module):
    """ADM UNet with EDM's ``DhariwalUNet`` parameter names (``map_*``, ``enc.*``, ``dec.*``).

    Level ``l`` runs at resolution ``img_resolution / 2^l`` with ``model_channels ·
    channel_mult[l]`` channels and ``num_blocks`` residual blocks (decoder: one more, fed by
    the encoder's skips); blocks at resolutions in ``attn_resolutions`` (and the first block
    of the bottleneck) use ``out_channels // channels_per_head`` attention heads (none when
    that is 0, as in EDM). ``label_dropout`` replaces a sample's labels by the zero vector
    with that probability in training mode (classifier-free guidance, docs/method.md §3).
    ``augment_dim > 0`` adds EDM's ``map_augment`` for augmentation labels. A super-resolution
    stage (docs/method.md §7) uses ``in_channels = 2·C`` (the noisy image and its conditioning
    image) with ``out_channels = C``, and ``cond_level=True`` adds ``map_cond_level`` for the
    conditioning noise level, zero-initialised like ``map_augment``.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int = 3,
        out_channels: int | None = None,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.1,
        label_dropout: float = 0.0,
        cond_level: bool = False,
        channels_per_head: int = 64,
        checkpointing: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        levels = len(channel_mult)
        if levels < 1 or img_resolution < 1 or img_resolution % 2 ** (levels - 1):
            raise ValueError(
                f"img_resolution {img_resolution} must be divisible by 2^(len(channel_mult)-1)"
                f" = {2 ** max(levels - 1, 0)}; change img_resolution or channel_mult"
            )
        for name, p in (("dropout", dropout), ("label_dropout", label_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.img_resolution = img_resolution
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.label_dim, self.augment_dim = label_dim, augment_dim
        self.model_channels = model_channels
        self.label_dropout = label_dropout
        self.levels = levels
        self.checkpointing = checkpointing
        self.channels_last = channels_last
        emb_channels = model_channels * channel_mult_emb

        def block(cin: int, cout: int, attention: bool = False, **kw: bool) -> UNetBlock:
            heads = cout // channels_per_head if attention else 0
            return UNetBlock(cin, cout, emb_channels, num_heads=heads, dropout=dropout, **kw)

        # Mapping: noise level (and labels) to the embedding vector.
        self.map_augment = _linear(augment_dim, model_channels, bias=False) if augment_dim else None
        if self.map_augment is not None and not skipping_init():
            nn.init.zeros_(self.map_augment.weight)
        # A super-resolution stage's conditioning noise level, embedded like the noise level.
        self.map_cond_level = _linear(model_channels, model_channels, bias=False) if cond_level else None
        if self.map_cond_level is not None and not skipping_init():
            nn.init.zeros_(self.map_cond_level.weight)
        self.map_layer0 = _linear(model_channels, emb_channels)
        self.map_layer1 = _linear(emb_channels, emb_channels)
        self.map_label = _linear(label_dim, emb_channels, bias=False) if label_dim else None
        if self.map_label is not None and not skipping_init():
            nn.init.normal_(self.map_label.weight)

        # Encoder.
        self.enc = nn.ModuleDict()
        skips = []
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            attention = res in attn_resolutions
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels * mult, 3)
                cout = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, down=True)
            skips.append(cout)
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = block(cout, model_channels * mult, attention)
                cout = model_channels * mult
                skips.append(cout)

        # Decoder; the ``_block`` entries take one encoder skip each, concatenated.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            attention = res in attn_resolutions
            if level == levels - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, up=True)
            for idx in range(num_blocks + 1):
                cin = cout + skips.pop()
                self.dec[f"{res}x{res}_block{idx}"] = block(cin, model_channels * mult, attention)
                cout = model_channels * mult
        self._takes_skip = tuple("_block" in name for name in self.dec)
        self.out_norm = group_norm(cout)
        self.out_conv = Conv2d(cout, self.out_channels, 3, init=ADM_ZERO)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _run(self, block: UNetBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, emb, use_reentrant=False)
        return block(x, emb)

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
        cond_level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``F(x, c_noise, labels)``; ``labels=None`` is the unconditional (zero) label.
        ``cond_level`` (``(N,)``, networks built with ``cond_level=True``): the transformed
        conditioning noise level of a super-resolution stage."""
        n = x.shape[0]
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % 2 ** (self.levels - 1) or x.shape[3] % 2 ** (self.levels - 1):
            raise ValueError(
                f"x is {x.shape[2]}x{x.shape[3]}: H and W must be divisible by "
                f"{2 ** (self.levels - 1)} for {self.levels} levels"
            )
        if labels is not None and labels.shape != (n, self.label_dim):
            raise ValueError(
                f"labels must be one-hot of shape ({n}, {self.label_dim}), got "
                f"{tuple(labels.shape)}" + (" (network is unconditional)" if not self.label_dim else "")
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        emb = noise_embedding(c_noise.reshape(-1).expand(n), self.model_channels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        if cond_level is not None:
            if self.map_cond_level is None:
                raise ValueError("this network has no conditioning-level input; build it with "
                                 "cond_level=True (a super-resolution stage)")
            emb = emb + self.map_cond_level(noise_embedding(cond_level.reshape(-1).expand(n),
                                                            self.model_channels))
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None and labels is not None:
            if self.training and self.label_dropout:
                keep = torch.rand(n, 1, device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)

        skips = []
        for layer in self.enc.values():
            x = self._run(layer, x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for layer, takes_skip in zip(self.dec.values(), self._takes_skip, strict=True):
            if takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = self._run(layer, x, emb)
        return self.out_conv(F.silu(self.out_norm(x))).contiguous()


@register("unet")
def build_unet(preset: str | None = None, **kwargs) -> UNet:
    """A :class:`UNet` from a named preset (``UNET_PRESETS``) updated by ``kwargs``."""
    config: dict = {}
    if preset is not None:
        if preset not in UNET_PRESETS:
            raise ValueError(f"unknown UNet preset {preset!r}; known: {', '.join(sorted(UNET_PRESETS))}")
        config.update(UNET_PRESETS[preset])
    config.update(kwargs)
    if "img_resolution" not in config:
        raise ValueError("UNet config needs img_resolution (or a preset that sets it)")
    return UNet(**config)
