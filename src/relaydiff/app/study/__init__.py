"""``relaydiff study CONFIG``: relay diffusion against its alternatives at equal training compute.

A study trains one stage-1 model, then every variant of the higher stage (relay ablations, the
conditional super-resolution baseline, an end-to-end EDM model at the target resolution) under
the **same budget** (training FLOPs measured by the cost accounting, or wall-clock minutes),
evaluates each the same way and writes ``results.json`` and figures (docs/study.md).

Layout of ``OUT``::

    OUT/data/{train,heldout}/        the held-out split of the data set (relaydiff.data.split)
    OUT/stage1/                      the shared stage-1 training run (none with stage1.cascade)
    OUT/eval/stage1_samples/         its samples, relayed by every variant (cascade FID)
    OUT/eval/stage1.json             its record in results.json (run, cost, config, samples)
    OUT/eval/floors.json             split-half FID and the up(down(x)) floor
    OUT/runs/<variant>-s<seed>/      one training run per variant and seed
    OUT/runs/<variant>-s<seed>/result.json   its evaluation (written last: the variant is done)
    OUT/results.json, OUT/table.md, OUT/figures/   the aggregate (table.md: its summary as Markdown)

Every step is resumable: a killed study continues where it stopped, a finished variant (its
``result.json``) is never trained or evaluated again. ``--variants`` runs a subset, so that
several processes can share one study; a lock file keeps two from training the same run.
``stage1=False`` (``--no-stage1``) evaluates the higher stages without a stage 1: SR-FID, the
curves and artifact correction, no cascade FID (an end-to-end variant samples on its own).
"""

from .runner import Study

__all__ = ["Study"]
