"""Sampler settings of the released models, by name (docs/released-models.md).

Each preset sets a converted stage's sampler according to its kind: ``edm`` for stage-1
networks, ``relay`` (and ``relay_process``, ``guidance``) for relay stages. Sources: EDM's
README (the recommended settings per data set) and RDM's generation scripts
``generate_imagenet.py`` / ``generate_celebahq.py`` (their default options).
"""

from __future__ import annotations

from ..stage import StageConfig

_EDM_IMAGENET64 = {"steps": 256, "churn": 40.0, "s_min": 0.05, "s_max": 50.0, "s_noise": 1.003}

PRESETS: dict[str, dict] = {
    # EDM README: deterministic Heun, 18 steps (NFE 35) for CIFAR-10 at 32×32.
    "edm-cifar10": {"edm": {"steps": 18}},
    # EDM README: deterministic Heun, 40 steps (NFE 79) for FFHQ and AFHQv2 at 64×64.
    "edm-ffhq64": {"edm": {"steps": 40}},
    "edm-afhqv2-64": {"edm": {"steps": 40}},
    # EDM README: stochastic, 256 steps (NFE 511), S_churn 40, S_min 0.05, S_max 50, S_noise 1.003.
    "edm-imagenet64": {"edm": _EDM_IMAGENET64},
    # RDM generate_imagenet.py: EDM's ImageNet-64 stage 1 as above; the 64→256 relay stage on a
    # 200-step grid with ρ 100, σ_min 0.008, truncated below σ 0.9, sampling L 0.93, η 0.2,
    # block noise 0.15, classifier-free guidance 3.5.
    "rdm-imagenet256": {"edm": _EDM_IMAGENET64,
                        "relay": {"steps": 200, "rho": 100.0, "sigma_min": 0.008, "sigma_trunc": 0.9,
                                  "prob_length": 0.93, "eta": 0.2},
                        "relay_process": {"block_alpha": 0.15},
                        "guidance": {"scale": 3.5}},
    # RDM generate_celebahq.py: stage 1 the SDE sampler with 120 steps, ρ 7, sde_scale 0.05;
    # the relay stage on a 150-step grid, ρ 7, σ_min 0.008, truncated below σ 0.95, sampling
    # L 1.05 (truncation_t), b_max 2.0, η 0.2, block noise 0.15.
    "rdm-celebahq256": {"edm": {"steps": 120, "rho": 7.0, "sde_scale": 0.05},
                        "relay": {"steps": 150, "rho": 7.0, "sigma_min": 0.008, "sigma_trunc": 0.95,
                                  "prob_length": 1.05, "eta": 0.2},
                        "relay_process": {"blur_sigma_max": 2.0, "block_alpha": 0.15}},
}


def apply_preset(config: StageConfig, name: str) -> None:
    """Set ``config``'s sampler (and, for relay stages, sampling-relevant process settings)
    from the preset ``name``; ``ValueError`` naming the known presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is unknown; use one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if config.kind == "edm":
        for key, value in preset.get("edm", {}).items():
            setattr(config.edm_sampler, key, value)
        return
    if "relay" not in preset:
        raise ValueError(f"preset {name!r} has no settings for a relay stage; use "
                         f"{', '.join(n for n, p in PRESETS.items() if 'relay' in p)}")
    for key, value in preset["relay"].items():
        setattr(config.relay_sampler, key, value)
    for key, value in preset.get("relay_process", {}).items():
        setattr(config.relay, key, value)
    for key, value in preset.get("guidance", {}).items():
        setattr(config.guidance, key, value)
