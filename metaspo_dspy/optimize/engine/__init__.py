"""The machinery every optimizer shares: the search base (evaluate nodes, ask for proposals), one
run of a teleprompter (run directory, budget, checkpoints), its artifact, and plain-data state."""
