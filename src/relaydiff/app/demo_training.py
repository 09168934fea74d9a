"""The demo's own training run (docs/demo.md): both stages of ``relaydiff/configs`` trained here,
each for a budget of training images and within its share of the ``--minutes`` cap.

The split (:func:`stage_minutes`): stage 1 may train for half of the cap, the relay stage for
the rest, i.e. its own half plus whatever stage 1 left unused. Minutes are training wall-clock
summed over re-runs (the checkpoints' cost), so a re-run continues a stage only while its share
has time left, and says what it reuses otherwise. Each budget (:data:`IMAGES_PER_MINUTE`) takes
about the same time on an idle 2-core machine, so neither stage can starve the other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..analysis.plotting import plot_loss_curves, save_figure
from ..training.checkpoint import newest_state
from ..training.config import config_path, load_train_config
from ..training.loop import train
from .demo_log import Clock, progress

STAGES = (("stage1_16", 16), ("relay_16to64", 64))
# Training images per stage for --minutes 1 (idle 2-core x86 machine; --minutes scales them).
IMAGES_PER_MINUTE = {"stage1_16": 2400, "relay_16to64": 1000}
STAGE1_SHARE = 0.5  # of the cap; the relay stage gets the rest
SMOKE_IMAGES = 48
SMOKE_OVERRIDES = ["network.model_channels=8", "network.channel_mult=[1,2]", "network.num_blocks=1",
                   "network.attn_resolutions=[]", "batch=8", "checkpoint.every_images=24",
                   "log.every_steps=1", "log.grid_every_images=0", "log.tensorboard=false",
                   "data.workers=0"]


def images_budget(name: str, minutes: float, smoke: bool) -> int:
    """Training images of stage ``name`` for a ``minutes`` cap (:data:`SMOKE_IMAGES` in smoke)."""
    return SMOKE_IMAGES if smoke else max(1, round(minutes * IMAGES_PER_MINUTE[name]))


def stage_minutes(minutes: float, stage1_used: float) -> tuple[float, float]:
    """The shares of the cap (stage 1, relay stage) once stage 1 has used ``stage1_used``
    minutes: :data:`STAGE1_SHARE` of it for stage 1; the rest for the relay stage, which is at
    least its own share, whatever stage 1 used."""
    first = STAGE1_SHARE * minutes
    return first, minutes - min(stage1_used, first)


def duration(minutes: float) -> str:
    """``42 s`` below a minute, else ``3.1 min``."""
    return f"{minutes * 60:.0f} s" if minutes < 1 else f"{minutes:.1f} min"


def train_records(run_dir: Path) -> list[dict]:
    """The ``train`` records of a run's ``log.jsonl`` (every run's, appended); a line still
    being written while this reads is left out."""
    log = run_dir / "log.jsonl"
    records = []
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "train":
            records.append(record)
    return records


def _status(run_dir: Path, budget: int) -> Callable[[], str]:
    def status() -> str:
        records = [r for r in train_records(run_dir) if r.get("loss") is not None]
        if not records:
            return f"no loss logged yet of {budget:,} images"
        last = records[-1]
        return f"{last['images_seen']:,}/{budget:,} images, loss {last['loss']:.3g}"
    return status


def train_stages(out: Path, data_root: Path, minutes: float, seed: int, smoke: bool,
                 clock: Clock) -> dict[str, dict]:
    """Train (or continue) both stages in ``out/train/<stage>``, each for its images budget
    within its share of the ``minutes`` cap; per stage: its cost, images budget, share and
    minutes used, and whether its share ran out before its budget (``cut_short``)."""
    runs: dict[str, dict] = {}
    for k, (name, res) in enumerate(STAGES):
        run_dir = out / "train" / name
        images = images_budget(name, minutes, smoke)
        over = [f"data.path={data_root / str(res)}", f"seed={seed}", f"total_images={images}"]
        if smoke:
            over += [("stage." + o) if o.startswith("network.") else o for o in SMOKE_OVERRIDES]
        cfg = load_train_config(config_path(name), over)
        first_used = runs[STAGES[0][0]]["minutes_used"] if runs else 0.0
        share = stage_minutes(minutes, first_used)[k]
        state = newest_state(run_dir)
        seen = 0 if state is None else state["images_seen"]
        used = 0.0 if state is None else state["cost"]["wall_seconds"] / 60
        if seen >= cfg.total_steps * cfg.batch:
            clock.log(f"{name}: finished earlier ({seen:,} images in {duration(used)}); "
                      "reusing it")
            cost, cut = state["cost"], False
        elif state is not None and used >= share:
            clock.log(f"{name}: its {duration(share)} share of the {minutes:g}-minute cap is "
                      f"spent ({seen:,} of {images:,} images in {duration(used)}); reusing that "
                      "checkpoint. Re-run with a larger --minutes to continue it.")
            cost, cut = state["cost"], True
        else:
            since = f", continuing from {seen:,}" if seen else ""
            clock.log(f"training {name} ({res} px) for {images:,} images{since}, at most "
                      f"{duration(share - used)} more (its share: {duration(share)} of the "
                      f"{minutes:g}-minute cap)")
            with progress(clock, f"training {name}", _status(run_dir, images)):
                result = train(cfg, run_dir, resume="auto", max_minutes=share - used,
                               progress=False)
            cost, cut = result.cost.to_dict(), not result.finished
            if cut:
                clock.log(f"NOTICE: its {duration(share)} share of the {minutes:g}-minute cap "
                          f"stopped {name} after {result.images_seen:,} of {images:,} images (a "
                          "busy machine?); its samples show an undertrained model. Re-run with "
                          "a larger --minutes to continue.")
        runs[name] = {"cost": cost, "cut_short": cut, "images_budget": images,
                      "minutes_share": share, "minutes_used": cost["wall_seconds"] / 60}
    return runs


def save_loss_curves(out: Path, path: Path) -> None:
    """The loss curves of both stages of ``out/train``, one panel each, as a PNG."""
    curves = {name: [(r["images_seen"], r["loss"]) for r in train_records(out / "train" / name)
                     if r.get("loss") is not None] for name, _ in STAGES}
    save_figure(plot_loss_curves(curves), path)


def training_text(runs: dict[str, dict], minutes: float) -> str:
    """The report's words on the run: the split rule with this run's shares, and per stage the
    images and minutes it got (from ``runs``, as :func:`train_stages` returns them)."""
    cut = [name for name, r in runs.items() if r["cut_short"]]
    notice = ""
    if cut:
        its = "its" if len(cut) == 1 else "their"
        notice = (f"<b>Notice: {' and '.join(cut)} did not reach {its} images budget within "
                  f"{its} share of the {minutes:g}-minute cap</b> (the machine was busier than "
                  "an idle 2-core one); these samples show an undertrained model. Re-run with a "
                  "larger --minutes to continue training. ")
    shares = [r["minutes_share"] for r in runs.values()]
    stages = "; ".join(f"{name} saw {r['cost'].get('images_seen', 0):,} of its "
                       f"{r['images_budget']:,} training images in {duration(r['minutes_used'])}"
                       f" of its {duration(r['minutes_share'])}" for name, r in runs.items())
    return (notice + f"Both stages trained here, on this machine, each for a budget of training "
            f"images (--minutes scales it) within its share of the {minutes:g}-minute cap: stage 1 "
            f"may train for {STAGE1_SHARE:.0%} of it ({duration(shares[0])}), the relay stage for "
            f"the rest ({duration(shares[1])}: its own share plus what stage 1 left unused), "
            f"counted over re-runs. Here {stages}. Loss curves (one panel per stage), cost "
            "(images seen, device-hours, FLOPs per image measured with torch.utils.flop_counter) "
            "and samples.")


def cost_rows(runs: dict[str, dict]) -> list[dict]:
    """The report's table: per stage images and minutes against its budget and share, cost."""
    rows = []
    for name, r in runs.items():
        c = r["cost"]
        rows.append({"stage": name, "images seen": c.get("images_seen", 0),
                     "images budget": r["images_budget"], "minutes used": r["minutes_used"],
                     "minutes share": r["minutes_share"],
                     "cut short by its share": "yes" if r["cut_short"] else "no",
                     "device-hours (CPU)": c.get("device_hours", 0.0),
                     "GFLOP per image (fwd+bwd)": c.get("flops_per_image", 0) / 1e9})
    return rows
