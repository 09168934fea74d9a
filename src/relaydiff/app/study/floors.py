"""The study's floors: what the data scores against itself at each metric's protocol, and what a
stage that adds nothing scores (docs/study.md, "Floors")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...data.floors import write_round_trip
from ...metrics.evaluate import dataset_features
from ...metrics.floors import split_floor, subset_floor

if TYPE_CHECKING:
    from .evaluation import Evaluator
    from .runner import Study


def study_floors(study: Study, evaluator: Evaluator) -> dict:
    """Data-vs-data FID at the cascade protocol (``n`` data images against all of them) and at
    the SR protocol (``n_sr`` images against ``n_sr`` others), each over
    ``eval.floor_splits`` random draws, and the ``up(down(x))`` round trip of the held-out
    images against themselves (with its bootstrap interval)."""
    e, shared = study.config.eval, evaluator.shared
    features = dataset_features(shared.refs["all"], evaluator.inception(), progress=False)
    rows = [
        {"name": "data against all data", "protocol": f"cascade FID ({shared.n} vs {len(features)})",
         "fid": subset_floor(features, shared.n, splits=e.floor_splits, seed=0)},
        {"name": "data against other data", "protocol": f"SR-FID ({shared.n_sr} vs {shared.n_sr})",
         "fid": split_floor(features, shared.n_sr, splits=e.floor_splits, seed=0)},
    ]
    ev = study.out / "eval"
    scale = study.resolution // study._stage1_resolution()
    write_round_trip(study.heldout_root, ev / "floor_up_down", shared.n_sr, scale)
    up_down = evaluator.metrics(ev / "floor_up_down", shared.refs["heldout"], ["fid", "kid"])
    return {"rows": rows, "up_down_heldout": up_down,
            "split_half_train_heldout": evaluator.metrics(shared.refs["train"],
                                                          shared.refs["heldout"], ["fid", "kid"])}
