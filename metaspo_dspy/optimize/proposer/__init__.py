"""Proposals from the optimizer LM: the requests (our own signatures), what the optimizer is shown,
and the filters that keep only usable prompts (echoes of the request are discarded)."""
