"""metaspo-dspy: MetaSPO (bilevel system-prompt optimization with meta-learning) for DSPy."""

import os as _os

# LiteLLM otherwise spends seconds trying to download its price list on first use.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from metaspo_dspy.adapters import ReferenceAdapter, with_system_prompt
from metaspo_dspy.metrics import MetricError, TaskMetric
from metaspo_dspy.optimize.metaspo import MetaSPO
from metaspo_dspy.program import MetaSPOProgram, SystemPrompt, WithSystemPrompt

__all__ = [
    "MetaSPO",
    "MetaSPOProgram",
    "MetricError",
    "ReferenceAdapter",
    "SystemPrompt",
    "TaskMetric",
    "WithSystemPrompt",
    "with_system_prompt",
]
__version__ = "0.1.0"
