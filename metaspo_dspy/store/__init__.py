"""What a run keeps on disk: atomic file writes, append-only journals and the digests that key them,
the ledger of what was paid, the fault log, and the run directory that holds them (settings,
checkpoints, results)."""
