"""Test helpers shipped with the package: a deterministic fake LM behind LiteLLM."""

from metaspo_dspy.testing.fake_lm import (
    FakeEngine,
    Request,
    default_skill,
    fake_lm,
    install_provider,
    register,
)

__all__ = ["FakeEngine", "Request", "default_skill", "fake_lm", "install_provider", "register"]
