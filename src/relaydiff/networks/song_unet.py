"""DDPM++ and NCSN++ (Song et al. 2021) in the parameter layout of EDM's ``SongUNet``.

EDM's released CIFAR-10, FFHQ-64 and AFHQv2-64 models use this network. Layer names, shapes and
the order of operations follow EDM's ``training/networks.py``, so their state dicts load with
``strict=True`` and give the same outputs (``tests/test_song_unet.py``). It shares the residual
block and convolutions of :mod:`relaydiff.networks.unet`; what differs from the ADM UNet:

* the noise embedding: positional (DDPM++, ``[sin, cos]`` order, ``endpoint=True``) or random
  Fourier features (NCSN++, a ``freqs`` buffer), ``model_channels × channel_mult_noise``
  channels, with the labels and augmentation labels added before the two mapping layers;
* blocks without adaptive scale, ``skip_scale = √½``, ``eps = 1e-6``, one attention head,
  xavier initialisation;
* encoder types ``standard``, ``skip`` (the image downsampled alongside, added through 1×1
  convolutions) and ``residual`` (a progressive residual input path, NCSN++), decoder types
  ``standard`` and ``skip`` (an output accumulated over the resolutions); attention in the
  decoder only in the last block of a level.

Raw network ``F(x, c_noise, labels)`` (docs/method.md §1.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .unet import SONG_ATTN, SONG_INIT, SONG_ZERO, Conv2d, UNetBlock, _linear, group_norm, skipping_init


class PositionalEmbedding(nn.Module):
    """``[cos(c·ω_j), sin(c·ω_j)]``, ``ω_j = (1/max_positions)^(j/(C/2 − endpoint))``."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=c.device) / (half - int(self.endpoint))
        angles = torch.outer(c, ((1 / self.max_positions) ** freqs).to(c.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(2π·c·f), sin(2π·c·f)]``, ``f ~ N(0, scale²)`` (a buffer)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        freqs = torch.empty(num_channels // 2) if skipping_init() else torch.randn(num_channels // 2)
        self.register_buffer("freqs", freqs * scale)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(c, (2 * math.pi * self.freqs).to(c.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


@register("song_unet")
class SongUNet(nn.Module):
    """DDPM++ (``embedding_type="positional"``, ``channel_mult_noise=1``, ``encoder_type=
    "standard"``, ``resample_filter=[1,1]``) and NCSN++ (``"fourier"``, 2, ``"residual"``,
    ``[1,3,3,1]``) with EDM's ``SongUNet`` names (``map_*``, ``enc.*``, ``dec.*``)."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int = 3,
        out_channels: int | None = None,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[int] = (1, 1),
    ) -> None:
        super().__init__()
        choices = {"embedding_type": (embedding_type, ("positional", "fourier")),
                   "encoder_type": (encoder_type, ("standard", "skip", "residual")),
                   "decoder_type": (decoder_type, ("standard", "skip"))}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is unknown; use one of {', '.join(allowed)}")
        out_channels = in_channels if out_channels is None else out_channels
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.levels = len(channel_mult)
        self.label_dim, self.label_dropout, self.augment_dim = label_dim, label_dropout, augment_dim
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        rf = list(resample_filter)

        def block(cin: int, cout: int, **kw) -> UNetBlock:
            return UNetBlock(cin, cout, emb_channels, num_heads=1 if kw.pop("attention", False) else 0,
                             dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                             resample_filter=rf, resample_proj=True, adaptive_scale=False,
                             init=SONG_INIT, init_zero=SONG_ZERO, init_attn=SONG_ATTN, **kw)

        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True)
                          if embedding_type == "positional" else FourierEmbedding(noise_channels))
        self.map_label = _linear(label_dim, noise_channels, init=SONG_INIT) if label_dim else None
        self.map_augment = (_linear(augment_dim, noise_channels, bias=False, init=SONG_INIT)
                            if augment_dim else None)
        self.map_layer0 = _linear(noise_channels, emb_channels, init=SONG_INIT)
        self.map_layer1 = _linear(emb_channels, emb_channels, init=SONG_INIT)

        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, 3, init=SONG_INIT)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, down=True)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True,
                                                               resample_filter=rf)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, init=SONG_INIT)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=rf, fused_resample=True,
                        init=SONG_INIT)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = block(cin, cout,
                                                            attention=res in attn_resolutions)
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, up=True)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = block(cin, cout, attention=attention)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0,
                                                             up=True, resample_filter=rf)
                self.dec[f"{res}x{res}_aux_norm"] = group_norm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, init=SONG_ZERO)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """``F(x, c_noise, labels)``; ``labels=None`` is the unconditional (zero) label."""
        n = x.shape[0]
        emb = self.map_noise(c_noise.reshape(-1).expand(n).to(torch.float32))
        emb = emb.reshape(n, 2, -1).flip(1).reshape(n, -1)  # [sin, cos], as DDPM++ orders it
        if self.map_label is not None:
            if labels is None:
                labels = torch.zeros(n, self.label_dim, device=x.device)
            if self.training and self.label_dropout:
                keep = torch.rand(n, 1, device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, layer in self.enc.items():
            if "aux_down" in name:
                aux = layer(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + layer(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + layer(aux)) / math.sqrt(2)
            else:
                x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
                skips.append(x)

        aux = tmp = None
        for name, layer in self.dec.items():
            if "aux_up" in name:
                aux = layer(aux)
            elif "aux_norm" in name:
                tmp = layer(x)
            elif "aux_conv" in name:
                tmp = layer(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != layer.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return aux
