"""Evaluation grids: every (system prompt, task, user prompt, example) item of a phase run once,
in threads or in client processes, journaled and identified by digests of what shaped its requests."""
