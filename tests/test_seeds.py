"""relaydiff.seeds: one owner of the seed streams, one check, one message for the library and the
command line (docs/method.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import one_line, run_cli
from PIL import Image

from relaydiff import RelayCascade
from relaydiff.seeds import INPUT_NOISE_STREAM, LABEL_STREAM, MAX_SEED, check_seeds


@pytest.fixture(scope="module")
def cascade() -> RelayCascade:
    return RelayCascade.toy((8, 16), label_dim=2, steps=2)


def test_accepted_seeds_never_reach_another_stream():
    assert MAX_SEED + 1 == LABEL_STREAM and LABEL_STREAM + MAX_SEED < INPUT_NOISE_STREAM
    check_seeds([0, MAX_SEED])
    check_seeds([])
    for bad in (-1, LABEL_STREAM):
        with pytest.raises(ValueError, match=f"^seed {bad} is outside 0–1,099,511,627,775 "):
            check_seeds([3, bad, 7])


def test_the_cascade_samples_the_largest_seed_and_refuses_the_next(cascade):
    assert cascade([MAX_SEED])[-1].shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match=f"seed {LABEL_STREAM} is outside"):
        cascade([0, LABEL_STREAM])
    with pytest.raises(ValueError, match="seed -1 is outside"):
        cascade([-1])


def test_library_and_command_line_refuse_seed_2_40_with_one_message(cascade, tmp_path, capsys):
    with pytest.raises(ValueError) as refused:
        cascade([LABEL_STREAM])
    message = str(refused.value)
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "a.png")
    for args in (["sample", "--toy", "--seeds", f"0-{LABEL_STREAM}"],
                 ["upscale", "--toy", "--input", images, "--seed", LABEL_STREAM]):
        one_line(run_cli(*args, "--out", tmp_path / "o", capsys=capsys), message)
    assert not (tmp_path / "o").exists()


def test_upscale_refuses_a_last_seed_past_the_bound(tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / name)
    r = run_cli("upscale", "--toy", "--input", images, "--seed", MAX_SEED, "--out", tmp_path / "o",
                capsys=capsys)
    one_line(r, f"seed {LABEL_STREAM} is outside")
    assert not (tmp_path / "o").exists()
