"""Ray Tune sweeps over distillation configs: trials, trial driver, schedulers, shared prefixes, results."""
