"""``relaydiff study`` on a toy grid (tiny networks, seconds): results, figures, equal budgets,
resumption after a kill, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import config_dict, image_folder

from relaydiff import RelayCascade
from relaydiff.data.build import build_dataset
from relaydiff.io.images import load_image, to_uint8
from relaydiff.io.sample_folder import seed_path

TOY = {"name": "toy", "channels": 8}


def run(*args, timeout=900, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relaydiff", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def study_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    src = image_folder(root / "src", 20, 16)
    build_dataset(src, root / "data", 16, [4], progress=False)
    s1 = config_dict(root, kind="edm", res=4, network=TOY, total_images=16)
    relay = config_dict(root, kind="relay", res=16, network=TOY, total_images=1)
    sr = config_dict(root, kind="sr", res=16, network=TOY, total_images=1)
    e2e = config_dict(root, kind="edm", res=16, network=TOY, total_images=1)
    for name, cfg in (("s1", s1), ("relay", relay), ("sr", sr), ("e2e", e2e)):
        (root / f"{name}.json").write_text(json.dumps(cfg))
    study = {
        "data": {"path": str(root / "data"), "heldout": 6, "split_seed": 0},
        "stage1": {"config": "s1.json", "data": "train"},
        "budget": {"kind": "flops", "value": 4e7},
        "variants": [
            {"name": "relay", "config": "relay.json", "main": True},
            {"name": "relay-alpha0", "config": "relay.json", "set": ["stage.relay.block_alpha=0"]},
            {"name": "sr", "config": "sr.json", "main": True, "sample_levels": [0.0, 0.1]},
            {"name": "e2e", "config": "e2e.json", "main": True},
        ],
        "eval": {"samples": 4, "curve_samples": 4, "curve_points": 2, "relay_steps": [4, 8],
                 "edm_steps": [2, 3]},
    }
    path = root / "study.json"
    path.write_text(json.dumps(study))
    return path


@pytest.fixture(scope="module")
def finished(study_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "s"
    # A cache of its own, so that the reference statistics this study computes can be told apart.
    env = {**os.environ, "RELAYDIFF_CACHE": str(out.parent / "cache")}
    r = run("study", str(study_config), "--out", str(out), "--no-progress", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_results_and_every_figure(finished):
    results = json.loads((finished / "results.json").read_text())
    assert [v["name"] for v in results["variants"]] == ["relay", "relay-alpha0", "sr", "e2e"]
    for v in results["variants"]:
        assert v["cascade"]["fid"] is not None and v["cascade"]["n_images"] == 4
        assert len(v["nfe_curve"]) == 2 and len(v["compute_curve"]) == 2
        assert v["config"]["stage"]["kind"] == v["kind"] and v["relaydiff_version"]
        assert v["timing"]["train_seconds"] > 0 and v["timing"]["eval_seconds"] > 0
        if v["kind"] != "edm":
            assert v["sr_heldout"]["n_images"] == 4 and v["sr_train"]["n_images"] == 4
            assert v["artifact_correction"][0]["method"].startswith("input noise")
    sr = next(v for v in results["variants"] if v["name"] == "sr")
    assert [row["level"] for row in sr["sample_levels"]] == [0.0, 0.1]
    assert results["floors"]["split_half"]["fid"] is not None
    assert results["data"]["heldout_images"] == 4 and results["stage1"]["cost"]["images_seen"] == 16
    for name in ("fid_vs_compute.png", "fid_vs_nfe.png", "grids.png"):
        assert (finished / "figures" / name).stat().st_size > 1000, name
    assert (finished / "runs" / "relay-s0" / "eval" / "artifacts.png").is_file()


def test_references_are_made_once_before_any_variant_and_timed_apart(finished):
    """The data's Inception statistics (all, held-out and training images) are the study's
    shared cost: computed before the first variant is evaluated, never inside a variant's time."""
    refs = list((finished.parent / "cache" / "references").glob("*.npz"))
    # ref_all, ref_heldout, ref_train (a file per statistics part each); nothing else
    assert len({p.name.split("-")[0] for p in refs}) == 3
    first_variant_image = min(p.stat().st_mtime_ns
                              for p in (finished / "runs").glob("*/eval/**/*.png"))
    assert max(p.stat().st_mtime_ns for p in refs) < first_variant_image
    results = json.loads((finished / "results.json").read_text())
    shared = results["shared_eval_seconds_by_part"]
    assert set(shared) == {"stage1_samples", "references", "floors"}
    assert all(v > 0 for v in shared.values())
    assert "Shared evaluation, once for all 4 runs" in (finished / "table.md").read_text()


def _inodes(folder: Path) -> set[int]:
    return {p.stat().st_ino for p in folder.glob("*/*.png")}  # the seed files, not grid.png


def test_settings_that_repeat_the_main_set_reuse_its_samples(finished):
    """The NFE point at the stage's own steps and the compute point of the evaluated snapshot
    are the first images of the held-out SR set: linked, not sampled again, same FID."""
    results = json.loads((finished / "results.json").read_text())
    relay = next(v for v in results["variants"] if v["name"] == "relay")
    own = relay["config"]["stage"]["relay_sampler"]["steps"]
    ev = finished / "runs" / "relay-s0" / "eval"
    point = next(p for p in relay["nfe_curve"] if p["steps"] == own)
    last = relay["compute_curve"][-1]
    assert point["fid"] == last["fid"] == relay["sr_heldout"]["fid"]  # 4 = curve_samples images
    assert _inodes(ev / f"steps_{own}") == _inodes(ev / f"at_{last['images']}") == _inodes(
        ev / "sr_heldout")
    sr = next(v for v in results["variants"] if v["name"] == "sr")
    assert sr["config"]["stage"]["sr"]["sample_level"] == 0.1  # its own level: the held-out set
    sr_ev = finished / "runs" / "sr-s0" / "eval"
    assert _inodes(sr_ev / "level_0.1") == _inodes(sr_ev / "sr_heldout")
    assert not _inodes(sr_ev / "level_0") & _inodes(sr_ev / "sr_heldout")
    assert sr["sample_levels"][1]["fid"] == sr["sr_heldout"]["fid"]
    other = next(p for p in relay["nfe_curve"] if p["steps"] != own)
    assert not _inodes(ev / f"steps_{other['steps']}") & _inodes(ev / "sr_heldout")
    parts = relay["timing"]["eval_seconds_by_part"]
    assert {"cascade", "sr_heldout", "sr_train", "artifacts", "nfe_curve",
            "compute_curve"} <= parts.keys()
    assert sum(parts.values()) <= relay["timing"]["eval_seconds"]


def test_no_stage1_evaluates_the_higher_stages_without_one(study_config, tmp_path):
    study = json.loads(study_config.read_text())
    study["variants"] = [v for v in study["variants"] if v["name"] in ("relay", "e2e")]
    study["eval"]["edm_steps"] = [2, 4]  # 4: the end-to-end stage's own steps
    study["eval"].update(samples=6, curve_samples=6)  # --set below makes them 4
    config = study_config.parent / "no-stage1.json"
    config.write_text(json.dumps(study))
    out = tmp_path / "s"
    sets = ["--set", "eval.samples=4", "--set", "eval.curve_samples=4"]
    r = run("study", str(config), "--out", str(out), "--no-stage1", "--no-progress", *sets)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out / "stage1").exists() and not (out / "eval" / "stage1_samples").exists()
    results = json.loads((out / "results.json").read_text())
    by = {v["name"]: v for v in results["variants"]}
    assert "cascade" not in by["relay"] and by["relay"]["sr_heldout"]["n_images"] == 4
    assert by["e2e"]["cascade"]["n_images"] == 4 and results["stage1"] is None
    assert results["overrides"] == ["eval.samples=4", "eval.curve_samples=4"]
    assert results["study_config"]["eval"]["samples"] == 4
    e2e = by["e2e"]
    assert e2e["nfe_curve"][-1]["fid"] == e2e["compute_curve"][-1]["fid"] == e2e["cascade"]["fid"]
    ev = out / "runs" / "e2e-s0" / "eval"
    assert _inodes(ev / "steps_4") == _inodes(ev / "cascade")
    table = (out / "table.md").read_text()
    assert "| relay (main) |" in table and (out / "figures" / "grids.png").is_file()


def test_table_values_come_from_the_summary(finished):
    results = json.loads((finished / "results.json").read_text())
    table = (finished / "table.md").read_text().splitlines()
    rows = {line.split("|")[1].strip().removesuffix(" (main)"): line for line in table[2:]
            if line.startswith("|")}
    for row in results["summary"]:
        line = rows[row["variant"]]
        fid = row["sr_heldout_fid"]["mean"]
        if fid is not None:
            assert f"{fid:.1f}" in line, row["variant"]
        if row.get("cascade_fid", {}).get("mean") is not None:
            assert f"{row['cascade_fid']['mean']:.1f}" in line


def test_equal_budgets_within_one_step(finished):
    results = json.loads((finished / "results.json").read_text())
    by = {v["name"]: v for v in results["variants"]}
    budget = results["study_config"]["budget"]["value"]
    for v in by.values():
        one_step = v["config"]["batch"] * v["budget"]["flops_per_image"]
        assert budget - one_step < v["budget"]["flops"] <= budget, v["name"]
    assert by["relay"]["budget"]["flops"] == by["relay-alpha0"]["budget"]["flops"]
    assert abs(by["relay"]["budget"]["flops"] - by["sr"]["budget"]["flops"]) <= max(
        by[n]["config"]["batch"] * by[n]["budget"]["flops_per_image"] for n in ("relay", "sr"))


def test_killed_after_the_first_variant_then_rerun_does_not_retrain_it(study_config, tmp_path):
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "relaydiff", "study", str(study_config),
                             "--out", str(out), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "runs" / "relay-s0" / "result.json"
    deadline = time.time() + 600
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists()
    before = first.read_bytes(), first.stat().st_mtime_ns
    ckpts = sorted((out / "runs" / "relay-s0" / "checkpoints").iterdir())
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    r = run("study", str(study_config), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "relay seed 0: done earlier" in r.stdout
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps
    assert len(json.loads((out / "results.json").read_text())["variants"]) == 4


def test_a_given_cascade_is_the_stage1_and_nothing_is_trained_for_it(study_config, tmp_path):
    """``stage1.cascade``: the first stage of a cascade folder (with its guide) samples the
    cascade set; no stage-1 run is made; its record names the cascade."""
    given = RelayCascade.toy((4, 16), seed=3)
    given.set_guide(0, given.configs[0], RelayCascade.toy((4, 16), seed=4).denoisers[0])
    given.configs[0].guidance.kind, given.configs[0].guidance.scale = "auto", 2.0
    given.save_pretrained(tmp_path / "given")
    study = json.loads(study_config.read_text())
    study["variants"] = [v for v in study["variants"] if v["name"] == "relay"]
    config = study_config.parent / "given-stage1.json"
    config.write_text(json.dumps(study))
    out = tmp_path / "s"
    r = run("study", str(config), "--out", str(out), "--no-progress",
            "--set", f"stage1.cascade={tmp_path / 'given'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out / "stage1").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["stage1"]["cascade"] == str(tmp_path / "given") and results["stage1"]["guide"]
    assert results["variants"][0]["cascade"]["n_images"] == 4
    # The stage-1 samples are the given cascade's own (its guide and guidance included).
    expected = RelayCascade.from_pretrained(tmp_path / "given")([0, 1], batch_size=2)[0]
    for k, arr in enumerate(to_uint8(expected)):
        assert (load_image(seed_path(out / "eval" / "stage1_samples", k)) == arr).all()


def test_seeds_selects_training_seeds(study_config, tmp_path):
    study = json.loads(study_config.read_text())
    study["variants"][0]["seeds"] = [0, 1]
    config = study_config.parent / "two-seeds.json"
    config.write_text(json.dumps(study))
    out = tmp_path / "s"
    r = run("study", str(config), "--out", str(out), "--variants", "relay", "--seeds", "1",
            "--train-only", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["relay-s1"]
    for seeds, needle in (("7", "--seeds 7: no selected variant has that training seed"),
                          ("x", "'x': give integers")):
        r = run("study", str(config), "--out", str(tmp_path / "o"), "--seeds", seeds)
        assert r.returncode == 2 and needle in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind, needle", [
    ("missing", "stage1.cascade '{}'"),
    ("relay only", "its first stage is a relay stage, not a stage 1"),
])
def test_a_bad_stage1_cascade_is_one_line(study_config, tmp_path, kind, needle):
    value = tmp_path / "no-such-cascade"
    if kind == "relay only":
        toy = RelayCascade.toy((4, 16))
        RelayCascade(toy.configs[1:], list(toy.denoisers)[1:]).save_pretrained(value)
    needle = needle.format(value)
    out = tmp_path / "o"
    r = run("study", str(study_config), "--out", str(out), "--set", f"stage1.cascade={value}")
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("change, needle", [
    (lambda s: s["variants"][0].update(seedz=[1]), "unknown key 'seedz'; did you mean 'seeds'"),
    (lambda s: s["budget"].update(value=0), "budget.value 0 must be a positive number"),
    (lambda s: s["data"].update(heldout=40), "data.heldout 40: the data set has 20 images"),
    (lambda s: s["variants"][1].update(name="relay"), "each with its own name"),
    (lambda s: s.update(stage1={"config": "s1.json", "set": ["stage.resolution=8",
                                                            "stage.network.name=toy"]}),
     "the study needs [4, 8, 16]"),
])
def test_bad_study_config_is_one_line_and_writes_nothing(study_config, tmp_path, change, needle):
    study = json.loads(study_config.read_text())
    change(study)
    bad = study_config.parent / f"bad-{abs(hash(needle))}.json"
    bad.write_text(json.dumps(study))
    out = tmp_path / "o"
    r = run("study", str(bad), "--out", str(out))
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (out / "runs").exists() and not (out / "results.json").exists()


@pytest.mark.parametrize("setting, needle", [
    ("budget.value=0", "budget.value 0 must be a positive number"),
    ("eval.sampels=8", "unknown key 'sampels'"),
    ("budget", "--set 'budget': expected KEY=VALUE"),
])
def test_a_bad_set_is_one_line_and_writes_nothing(study_config, tmp_path, setting, needle):
    out = tmp_path / "o"
    r = run("study", str(study_config), "--out", str(out), "--set", setting)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())
