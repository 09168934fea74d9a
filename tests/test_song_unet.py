"""relaydiff's SongUNet (DDPM++ / NCSN++) against EDM's: keys, shapes and outputs.

The fixture ``fixtures/edm_songunet_reference.safetensors`` was made by running EDM's own
``training/networks.py`` (NVlabs/edm @0a2ff34f) outside this repository: small DDPM++, NCSN++
and skip-encoder/skip-decoder networks (unconditional and with 10 classes), their weights moved
away from the initialisation, three inputs at σ = 0.05, 0.7, 20 and EDMPrecond's outputs. No
EDM code is in the repository; only these numbers are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from relaydiff.networks import build_network
from relaydiff.precond import EDMPrecond

FIXTURE = Path(__file__).parent / "fixtures" / "edm_songunet_reference.safetensors"


def _cases() -> dict[str, dict]:
    with safe_open(str(FIXTURE), "pt") as f:
        return json.loads(f.metadata()["configs"])


@pytest.mark.parametrize("case", sorted(_cases()))
def test_song_unet_loads_edm_state_dicts_strictly_and_matches_outputs(case):
    cfg = json.loads(_cases()[case])
    with safe_open(str(FIXTURE), "pt") as f:
        keys = [k for k in f.keys() if k.startswith(f"{case}/")]
        get = {k[len(case) + 1:]: f.get_tensor(k) for k in keys}
    state = {k[len("state/"):]: v for k, v in get.items() if k.startswith("state/")}
    net_cfg = {k: v for k, v in cfg.items() if k != "model_type"}
    label_dim = net_cfg["label_dim"]
    den = EDMPrecond(build_network({"name": "song_unet", **net_cfg}), label_dim=label_dim).eval()
    ours = den.state_dict()
    assert set(ours) == set(state)
    assert all(ours[k].shape == state[k].shape for k in state)
    den.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = den(get["x"], get["sigma"], get.get("labels"))
    ref = get["out"]
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-5, rel


def test_song_unet_options_are_checked():
    with pytest.raises(ValueError, match="encoder_type 'fancy' is unknown"):
        build_network({"name": "song_unet", "img_resolution": 16, "encoder_type": "fancy"})
