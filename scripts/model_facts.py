"""Write the sizes and training records that docs/pretrained.md and docs/quality.md quote.

Nothing is trained or sampled; it takes seconds. For each training config the docs name
(``relaydiff/configs/*.json``, ``relaydiff/configs/study/*.json``): the network's parameters, the
FLOPs of one training image (fwd+bwd, ``torch.utils.flop_counter``, as training counts them;
class-conditional configs get the data's classes) and what its EMA ramp-up is as a power-function
EMA (docs/quality.md). For each packaged cascade: every network's parameters and weights file,
the training record of ``cascade.json`` with its total FLOPs, and the cascade's size on disk.

    python scripts/model_facts.py [--out docs/images/model_facts.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from relaydiff.data.datasets import open_dataset
from relaydiff.data.sources import FLUENT_EMOJI_COUNT, default_dataset
from relaydiff.io.files import write_json
from relaydiff.pretrained import PRETRAINED, PRETRAINED_256, pretrained_path
from relaydiff.stage import StageConfig, build_denoiser
from relaydiff.training.config import config_path, load_train_config
from relaydiff.training.cost import flops_per_image
from relaydiff.training.loop import make_loss
from relaydiff.training.posthoc_ema import sigma_rel_from_gamma
from relaydiff.training.setup import resolve_stage
from relaydiff.version import __version__

CONFIGS = ["stage1_16", "relay_16to64", "relay_64to256", "study/emoji16_stage1",
           "study/emoji64_relay", "study/emoji64_sr", "study/emoji64_edm"]
CASCADES = [PRETRAINED, PRETRAINED_256]


def parameters(stage: StageConfig) -> int:
    return sum(p.numel() for p in build_denoiser(stage, initialize=False).model.parameters())


def rampup_ema(halflife: float, ratio: float | None) -> dict | None:
    """While ``h = ratio·t`` (``t < halflife / ratio``), ``β = 0.5^(Δt/(ratio·t))`` is, to first
    order in ``Δt/t``, the power-function EMA ``β = (1 − Δt/t)^(γ+1)`` with ``γ + 1 = ln 2 / ratio``."""
    if not ratio:
        return None
    gamma = math.log(2) / ratio - 1
    return {"until_images": halflife / ratio, "gamma": gamma, "sigma_rel": sigma_rel_from_gamma(gamma)}


def config_facts(name: str, classes: int) -> dict:
    path = config_path(name)
    cfg = resolve_stage(load_train_config(path), classes, "fluent-emoji-3d")
    st = cfg.stage
    fpi = flops_per_image(build_denoiser(st, initialize=False), make_loss(cfg),
                          (st.channels, st.resolution, st.resolution), st.label_dim)
    return {"config": f"relaydiff/configs/{name}.json", "kind": st.kind,
            "resolution": st.resolution, "label_dim": st.label_dim,
            "parameters": parameters(st), "flops_per_image": fpi, "batch": cfg.batch,
            "ema": {"halflife_images": cfg.ema.halflife_images,
                    "rampup_ratio": cfg.ema.rampup_ratio,
                    "rampup_as_power_ema": rampup_ema(cfg.ema.halflife_images, cfg.ema.rampup_ratio)}}


def network_facts(folder: Path) -> dict:
    stage = StageConfig.from_dict(json.loads((folder / "config.json").read_text()))
    return {"parameters": parameters(stage),
            "weights_bytes": (folder / "model.safetensors").stat().st_size}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def cascade_facts(name: str) -> dict:
    root = pretrained_path(name)
    record = json.loads((root / "cascade.json").read_text())
    training = {t["stage"]: t for t in record.get("training", [])}
    stages, hours, outside = [], 0.0, []
    for entry in record["stages"]:
        folder = root.parent / entry if "/" in entry else root / entry
        if "/" in entry:
            outside.append(folder)
        net = {"stage": entry, **network_facts(folder)}
        t = training.get(entry)
        if t is not None:
            guide = t.get("guide")
            net["training"] = {k: v for k, v in t.items() if k not in ("guide", "stage")}
            net["training"]["total_flops"] = t["images_seen"] * t["flops_per_image"]
            hours += t["device_hours"]
            if guide is not None:
                net["guide"] = {**network_facts(folder / "guide"), "training": {
                    **guide, "total_flops": guide["images_seen"] * guide["flops_per_image"]}}
                hours += guide["device_hours"]
        stages.append(net)
    own = folder_bytes(root)
    return {"cascade": name, "stages": stages, "device_hours_all_networks": hours,
            "package_bytes": own,
            "self_contained_bytes": own + sum(folder_bytes(f) for f in outside)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/model_facts.json"))
    args = parser.parse_args()
    data = open_dataset(default_dataset((64, 16)) / "16", resolution=16)
    facts = {
        "what": "network sizes, FLOPs per training image and packaged training records "
                "(scripts/model_facts.py; nothing trained or sampled)",
        "relaydiff_version": __version__,
        "data": {"name": "@lobehub/fluent-emoji-3d@1.1.0", "images": len(data),
                 "images_expected": FLUENT_EMOJI_COUNT, "classes": data.num_classes},
        "configs": {name: config_facts(name, data.num_classes) for name in CONFIGS},
        "packaged": {name: cascade_facts(name) for name in CASCADES},
    }
    write_json(facts, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
