"""Optimizers: MetaSPO and the single-task baselines (ProTeGi, APE)."""
