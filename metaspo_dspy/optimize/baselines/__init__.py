"""Single-task baselines of the paper: ProTeGi (APO) and APE, sharing one set-up for one task."""
