"""``relaydiff study`` on a toy grid (tiny networks, seconds): whole-pipeline budgets, budget
points, controls, intervals, floors, figures, resumption after a kill, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from training_helpers import config_dict, image_folder

from relaydiff import RelayCascade
from relaydiff.data.build import build_dataset
from relaydiff.io.images import load_image, to_uint8
from relaydiff.io.sample_folder import seed_path
from relaydiff.io.tensors import load_tensors
from relaydiff.schedules import karras_sigmas
from relaydiff.training.config import load_train_config

TOY = {"name": "toy", "channels": 8}
S1_IMAGES = 128


def run(*args, timeout=900, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relaydiff", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def training_flops(config: Path, images: int) -> float:
    """FLOPs of ``images`` training images of a config, by the library's cost counter."""
    from relaydiff.app.study.plan import measured_flops

    return float(images * measured_flops(load_train_config(config), 0))


@pytest.fixture(scope="module")
def study_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    src = image_folder(root / "src", 20, 16)
    build_dataset(src, root / "data", 16, [4], progress=False)
    s1 = config_dict(root, kind="edm", res=4, network=TOY, total_images=S1_IMAGES)
    relay = config_dict(root, kind="relay", res=16, network=TOY, total_images=1)
    sr = config_dict(root, kind="sr", res=16, network=TOY, total_images=1)
    e2e = config_dict(root, kind="edm", res=16, network=TOY, total_images=1)
    for name, cfg in (("s1", s1), ("relay", relay), ("sr", sr), ("e2e", e2e)):
        (root / f"{name}.json").write_text(json.dumps(cfg))
    # The higher stages' share: 16 relay images at the main point, 8 at the half point.
    total = training_flops(root / "s1.json", S1_IMAGES) + training_flops(root / "relay.json", 16)
    study = {
        "data": {"path": str(root / "data"), "heldout": 6, "split_seed": 0},
        "stage1": {"config": "s1.json", "data": "train"},
        "budget": {"total": total, "points": [0.5, 1]},
        "variants": [
            {"name": "relay", "config": "relay.json", "main": True},
            {"name": "relay-alpha0", "config": "relay.json", "set": ["stage.relay.block_alpha=0"]},
            {"name": "sr", "config": "sr.json", "main": True},
            {"name": "sr-trunc", "of": "sr", "main": True,
             "sample": ["edm_sampler.steps=8", "edm_sampler.sigma_min=0.008",
                        "edm_sampler.sigma_trunc=0.9"]},
            {"name": "relay-guided", "of": "relay", "guide": 2.0},
            {"name": "e2e", "config": "e2e.json", "main": True},
        ],
        "eval": {"samples": 4, "intervals": 50, "floor_splits": 3, "relay_steps": [4, 8],
                 "edm_steps": [2, 4]},
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


def _results(finished: Path) -> dict:
    return json.loads((finished / "results.json").read_text())


def test_results_points_and_every_figure(finished):
    results = _results(finished)
    names = [v["name"] for v in results["variants"]]
    assert names == ["relay", "relay-alpha0", "sr", "sr-trunc", "relay-guided", "e2e"]
    for v in results["variants"]:
        assert [p["multiple"] for p in v["points"]] == [0.5, 1]
        assert v["config"]["stage"]["kind"] == v["kind"] and v["relaydiff_version"]
        assert v["timing"]["eval_seconds"] > 0 and v["threads"] >= 1
        for p in v["points"]:
            assert p["train_seconds"] > 0
            assert p["cascade"]["n_images"] == 4
            if v["kind"] != "edm":
                assert p["sr_heldout"]["n_images"] == 4
        main = v["points"][1]
        full = not v["control"]
        assert ("sr_train" in main) == (full and v["kind"] != "edm")
        assert ("nfe_curve" in main) == full and "nfe_curve" not in v["points"][0]
        if full and v["kind"] != "edm":
            assert main["artifact_correction"][0]["method"].startswith("input noise")
            assert (finished / "runs" / f"{v['name']}-s0" / "eval" / "x1" / "artifacts.png").is_file()
    assert results["stage1"]["trained"]["images_seen"] == S1_IMAGES
    for name in ("fid_vs_compute.png", "fid_vs_nfe.png", "grids.png"):
        assert (finished / "figures" / name).stat().st_size > 1000, name


def test_controls_train_nothing_and_reuse_their_variants_runs(finished):
    runs = finished / "runs"
    assert (runs / "sr-s0" / "checkpoints").is_dir() and (runs / "relay-s0" / "checkpoints").is_dir()
    for control in ("sr-trunc-s0", "relay-guided-s0"):
        assert not (runs / control / "checkpoints").exists()
    by = {v["name"]: v for v in _results(finished)["variants"]}
    assert by["sr-trunc"]["of"] == "sr" and by["sr-trunc"]["control"]
    assert by["sr-trunc"]["points"][1]["images"] == by["sr"]["points"][1]["images"]
    # A different sampler on the same weights: other images.
    a = load_image(seed_path(runs / "sr-s0" / "eval" / "x1" / "sr_heldout", 1 << 20))
    b = load_image(seed_path(runs / "sr-trunc-s0" / "eval" / "x1" / "sr_heldout", 1 << 20))
    assert (a != b).any()


def test_every_variant_is_charged_its_whole_pipeline(finished, study_config):
    """Total FLOPs at point m: S + m·(T − S) for every variant, within one training step, where
    S is what the stage-1 run's own record says it cost; a cascade's total adds S to the higher
    stage's FLOPs (as the runs' records say), the end-to-end model's is its own alone."""
    results = _results(finished)
    state = json.loads(max((finished / "stage1" / "checkpoints").iterdir()).joinpath(
        "state.json").read_text())
    s1 = state["cost"]["images_seen"] * state["cost"]["flops_per_image"]
    total = results["study_config"]["budget"]["total"]
    for v in results["variants"]:
        run = finished / "runs" / f"{v['of']}-s0" / "checkpoints"
        for p in v["points"]:
            target = s1 + p["multiple"] * (total - s1)
            step = json.loads(next(run.glob(f"ckpt-{p['images'] // 4:08d}")).joinpath(
                "state.json").read_text())["cost"]
            own = step["images_seen"] * step["flops_per_image"]
            assert step["images_seen"] == p["images"]
            assert p["total_flops"] == pytest.approx(own + (0 if v["kind"] == "edm" else s1))
            assert target - 4 * step["flops_per_image"] < p["total_flops"] <= target, v["name"]
    by = {v["name"]: v for v in results["variants"]}
    assert by["e2e"]["points"][1]["images"] > by["relay"]["points"][1]["images"]  # it gets S too


def test_total_nfe_counts_stage1_and_guides(finished, study_config):
    """NFE per final image by closed form: Heun on an n-point grid takes 2(n−1)−1 evaluations
    (Euler n−1), a truncated grid only its σ below the truncation, guidance doubles them."""
    by = {v["name"]: v["points"][1] for v in _results(finished)["variants"]}
    stage1 = 2 * 4 - 1  # the toy stage 1: 4 Heun steps, unguided
    relay = 2 * (len(karras_sigmas(8, 0.008, 80, 7, truncate=0.9)) - 1) - 1
    assert by["relay"]["nfe"] == relay and by["relay"]["total_nfe"] == relay + stage1
    assert by["relay-guided"]["nfe"] == 2 * relay
    assert by["relay-guided"]["total_nfe"] == 2 * relay + stage1
    assert by["sr"]["total_nfe"] == 2 * 4 - 1 + stage1
    assert by["sr-trunc"]["nfe"] == relay  # the relay stage's grid: the same start and steps
    assert by["e2e"]["total_nfe"] == by["e2e"]["nfe"] == 2 * 4 - 1


def test_a_budget_point_is_the_state_of_a_run_trained_straight_there(finished, tmp_path):
    """The runs train to each point, snapshot, then go on; the main point's weights equal a run
    that trained straight to it."""
    results = _results(finished)
    relay = next(v for v in results["variants"] if v["name"] == "relay")
    cfg = dict(relay["config"])
    cfg["total_images"] = relay["points"][1]["images"]
    cfg["checkpoint"] = {"every_images": 10**9, "keep": 1}
    path = tmp_path / "straight.json"
    path.write_text(json.dumps(cfg))
    r = run("train", str(path), "--out", str(tmp_path / "straight"), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    straight = load_tensors(next((tmp_path / "straight" / "checkpoints").iterdir()) / "ema.safetensors")
    step = relay["points"][1]["images"] // cfg["batch"]
    pointwise = load_tensors(finished / "runs" / "relay-s0" / "checkpoints" / f"ckpt-{step:08d}"
                             / "ema.safetensors")
    assert straight.keys() == pointwise.keys()
    for key in straight:
        assert np.array_equal(straight[key].numpy(), pointwise[key].numpy()), key


def test_intervals_and_floors(finished):
    results = _results(finished)
    for v in results["variants"]:
        for p in v["points"]:
            for name in ("cascade", "sr_heldout"):
                if name in p:
                    lo, hi = p[name]["fid_ci95"]
                    assert lo <= hi and p[name]["fid"] is not None
    floors = results["floors"]
    assert [row["name"] for row in floors["rows"]] == ["data against all data",
                                                      "data against other data"]
    for row in floors["rows"]:
        assert len(row["fid"]["values"]) == 3 and row["fid"]["min"] <= row["fid"]["max"]
    assert floors["up_down_heldout"]["fid"] is not None


def test_references_are_made_once_before_any_variant_and_timed_apart(finished):
    """The data's Inception statistics (all, held-out and training images) are the study's
    shared cost: computed before the first variant is evaluated, never inside a variant's time."""
    refs = list((finished.parent / "cache" / "references").glob("*.npz"))
    # ref_all, ref_heldout, ref_train (a file per statistics part each); nothing else
    assert len({p.name.split("-")[0] for p in refs}) == 3
    first_variant_image = min(p.stat().st_mtime_ns
                              for p in (finished / "runs").glob("*/eval/**/*.png"))
    assert max(p.stat().st_mtime_ns for p in refs) < first_variant_image
    shared = _results(finished)["shared_eval_seconds_by_part"]
    assert set(shared) == {"stage1_samples", "references", "floors"} and all(v > 0 for v in shared.values())
    assert "Shared evaluation, once for the study" in (finished / "table.md").read_text()


def test_table_values_come_from_the_summary(finished):
    results = _results(finished)
    table = (finished / "table.md").read_text().splitlines()
    main = {line.split("|")[1].strip().split(" (")[0]: line for line in table
            if line.startswith("|") and line.count("|") == 13}
    for row in results["summary"]["rows"]:
        if row["multiple"] != 1:
            continue
        line = main[row["variant"]]
        for section in ("cascade", "sr_heldout"):
            stat = row.get(section, {}).get("fid")
            if stat and stat["mean"] is not None:
                lo, hi = stat["ci95"]
                assert f"{stat['mean']:.1f} [{lo:.1f}, {hi:.1f}]" in line, row["variant"]
        assert f"{row['total_flops'] / 1e12:,.2f}" in line


def test_killed_after_the_first_evaluation_then_rerun_does_not_redo_it(study_config, tmp_path):
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
    assert "relay-s0: done earlier" in r.stdout
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps
    assert len(json.loads((out / "results.json").read_text())["variants"]) == 6


def test_no_stage1_evaluates_the_higher_stages_without_one(study_config, tmp_path):
    study = json.loads(study_config.read_text())
    study["variants"] = [v for v in study["variants"] if v["name"] in ("relay", "e2e")]
    config = study_config.parent / "no-stage1.json"
    config.write_text(json.dumps(study))
    out = tmp_path / "s"
    r = run("study", str(config), "--out", str(out), "--no-stage1", "--no-progress",
            "--set", "eval.intervals=20")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out / "stage1").exists() and not (out / "eval" / "stage1_samples").exists()
    results = json.loads((out / "results.json").read_text())
    by = {v["name"]: v["points"][1] for v in results["variants"]}
    assert "cascade" not in by["relay"] and by["relay"]["sr_heldout"]["n_images"] == 4
    assert by["e2e"]["cascade"]["n_images"] == 4 and results["stage1"] is None
    assert results["overrides"] == ["eval.intervals=20"]
    assert by["relay"]["sr_heldout"]["intervals"]["resamples"] == 20
    assert "| relay (main) |" in (out / "table.md").read_text()


def test_a_given_cascade_is_the_stage1_charged_by_its_training_record(study_config, tmp_path):
    """``stage1.cascade``: the first stage of a cascade folder (with its guide) samples the
    cascade set; no stage-1 run is made; its cost (guide included) comes from its record."""
    given = RelayCascade.toy((4, 16), seed=3)
    given.set_guide(0, given.configs[0], RelayCascade.toy((4, 16), seed=4).denoisers[0])
    given.configs[0].guidance.kind, given.configs[0].guidance.scale = "auto", 2.0
    record = {"images_seen": 40, "flops_per_image": 1000, "device_hours": 0.0,
              "guide": {"images_seen": 8, "flops_per_image": 500}}
    RelayCascade(given.configs, list(given.denoisers), [record, {}],
                 [(given.guide_configs[0], given.guides["0"]), None]).save_pretrained(tmp_path / "given")
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
    assert results["stage1_cost"]["flops"] == 40 * 1000 + 8 * 500
    assert results["stage1_cost"]["nfe"] == 2 * (2 * 8 - 1)  # 8 Heun steps, guided
    relay = results["variants"][0]["points"][1]
    assert relay["total_flops"] == relay["flops"] + 44000 and relay["cascade"]["n_images"] == 4
    # The stage-1 samples are the given cascade's own (its guide and guidance included).
    expected = RelayCascade.from_pretrained(tmp_path / "given")([0, 1], batch_size=2)[0]
    for k, arr in enumerate(to_uint8(expected)):
        assert (load_image(seed_path(out / "eval" / "stage1_samples", k)) == arr).all()
    plain = tmp_path / "plain"
    RelayCascade.toy((4, 16), seed=3).save_pretrained(plain)
    r = run("study", str(config), "--out", str(tmp_path / "o"), "--set", f"stage1.cascade={plain}")
    assert r.returncode == 2 and "no training record with its FLOPs" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


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


def _e2e_guided(s: dict) -> None:
    s["variants"][-1]["set"] = ["stage.guidance.scale=2.0"]


@pytest.mark.parametrize("change, needle", [
    (lambda s: s["variants"][0].update(seedz=[1]), "unknown key 'seedz'; did you mean 'seeds'"),
    (lambda s: s["budget"].update(total=0), "budget.total 0 must be a positive number"),
    (lambda s: s["budget"].update(points=[0.5]), "budget.points [0.5]: positive multiples, 1 among"),
    (lambda s: s["budget"].update(total=10.0), "is not above stage 1's"),
    (lambda s: s["data"].update(heldout=40), "data.heldout 40: the data set has 20 images"),
    (lambda s: s["variants"][1].update(name="relay"), "each with its own name"),
    (lambda s: s["variants"][3].update(of="nothing"), "of 'nothing' is not a trained variant"),
    (lambda s: s["variants"][3].update(config="sr.json"), "give either config"),
    (lambda s: s["variants"][3].update(sample=["edm_sampler.stepz=3"]), "unknown key 'stepz'"),
    (lambda s: s["variants"][4].update(guide=0.5), "guide 0.5 must be ≥ 1"),
    (lambda s: s["variants"].append({"name": "g", "of": "e2e", "guide": 2.0}),
     "an end-to-end model is guided as stage 1 is"),
    (_e2e_guided, "an end-to-end model is compared with stage 1's conditioning and guidance"),
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


@pytest.mark.parametrize("args, needle", [
    (["--set", "budget.total=0"], "budget.total 0 must be a positive number"),
    (["--set", "eval.sampels=8"], "unknown key 'sampels'"),
    (["--set", "budget"], "--set 'budget': expected KEY=VALUE"),
    (["--preset", "quick"], "give a study CONFIG file or --preset NAME"),
])
def test_a_bad_set_is_one_line_and_writes_nothing(study_config, tmp_path, args, needle):
    out = tmp_path / "o"
    r = run("study", str(study_config), "--out", str(out), *args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("preset", ["quick", "default"])
def test_the_presets_ship_and_load(preset, tmp_path):
    """Each preset is a complete study config shipped in the package (its training configs
    beside it); a bad override of it is refused like any config's."""
    from relaydiff.app.commands.study import preset_path
    from relaydiff.app.study.config import load_study

    config, base = load_study(preset_path(preset))
    assert config.variants and all((base / v.config).is_file() for v in config.variants if v.config)
    r = run("study", "--preset", preset, "--out", str(tmp_path / "o"), "--set", "budget.total=-1")
    assert r.returncode == 2 and "budget.total -1 must be a positive number" in r.stderr, r.stderr


def test_plan_writes_every_runs_budget_points_and_trains_nothing(study_config, finished, tmp_path):
    out = tmp_path / "p"
    r = run("study", str(study_config), "--out", str(out), "--plan")
    assert r.returncode == 0, r.stderr[-3000:]
    plan = json.loads((out / "plan.json").read_text())
    assert not (out / "runs").exists() and not (out / "stage1").exists()
    assert [p["run"] for p in plan["runs"]] == ["relay-s0", "relay-alpha0-s0", "sr-s0", "e2e-s0"]
    assert len(plan["evaluations"]) == 6
    done = {v["name"]: v for v in _results(finished)["variants"]}
    for p in plan["runs"]:
        got = done[p["run"].removesuffix("-s0")]["points"]
        assert [q["images"] for q in p["points"]] == [q["images"] for q in got]
        assert [q["total_flops"] for q in p["points"]] == pytest.approx(
            [q["total_flops"] for q in got])
