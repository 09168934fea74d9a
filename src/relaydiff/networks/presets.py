"""Named UNet configurations: size presets and the paper's released networks (docs/networks.md).

Each entry is a complete set of :class:`relaydiff.networks.unet.UNet` keyword arguments, used in
configs as ``{"name": "unet", "preset": "<name>", **overrides}``; this table is the only place
the values are written down.
Size presets are given at 64×64, unconditional; override ``img_resolution`` or
``label_dim`` as needed (the parameter count depends on them only through attention
placement and the label map).
"""

from __future__ import annotations

UNET_PRESETS: dict[str, dict] = {
    # Size presets (≈2 M, ≈20 M, ≈100 M parameters at 64×64).
    "tiny": {
        "img_resolution": 64,
        "label_dim": 0,
        "model_channels": 32,
        "channel_mult": [1, 2, 2],
        "num_blocks": 2,
        "attn_resolutions": [16, 8],
        "dropout": 0.0,
    },
    "small": {
        "img_resolution": 64,
        "label_dim": 0,
        "model_channels": 64,
        "channel_mult": [1, 2, 2, 4],
        "num_blocks": 2,
        "attn_resolutions": [16, 8],
        "dropout": 0.1,
    },
    "base": {
        "img_resolution": 64,
        "label_dim": 0,
        "model_channels": 128,
        "channel_mult": [1, 2, 3, 4],
        "num_blocks": 2,
        "attn_resolutions": [32, 16, 8],
        "dropout": 0.1,
    },
    # ImageNet 64×64 stage 1: EDM's released ADM network (trained with --augment=0, so no
    # augmentation map, and without label dropout).
    "imagenet64-stage1": {
        "img_resolution": 64,
        "label_dim": 1000,
        "augment_dim": 0,
        "model_channels": 192,
        "channel_mult": [1, 2, 3, 4],
        "num_blocks": 3,
        "attn_resolutions": [32, 16, 8],
        "dropout": 0.1,
        "label_dropout": 0.0,
    },
    # ImageNet 64→256 relay stage. RDM's training command keeps EDM's default augmentation
    # (augment_dim 9). The release has no label dropout; relaydiff uses 0.1 so that the
    # zero label is learnt for classifier-free guidance.
    "imagenet256-relay": {
        "img_resolution": 256,
        "label_dim": 1000,
        "augment_dim": 9,
        "model_channels": 256,
        "channel_mult": [1, 1, 2, 2, 4, 4],
        "num_blocks": 2,
        "attn_resolutions": [32, 16, 8],
        "dropout": 0.1,
        "label_dropout": 0.1,
    },
    # CelebA-HQ, unconditional, EDM augmentation p 0.2 (augment_dim 9).
    "celebahq64-stage1": {
        "img_resolution": 64,
        "label_dim": 0,
        "augment_dim": 9,
        "model_channels": 192,
        "channel_mult": [1, 2, 3, 4],
        "num_blocks": 3,
        "attn_resolutions": [32, 16, 8],
        "dropout": 0.15,
    },
    "celebahq256-relay": {
        "img_resolution": 256,
        "label_dim": 0,
        "augment_dim": 9,
        "model_channels": 256,
        "channel_mult": [1, 1, 2, 2, 4, 4],
        "num_blocks": 2,
        "attn_resolutions": [32, 16, 8],
        "dropout": 0.2,
    },
}
