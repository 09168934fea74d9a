"""Training one stage: configuration, the loop, checkpoints, EMA, logging and cost."""
