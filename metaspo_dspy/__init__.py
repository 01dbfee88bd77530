"""metaspo-dspy: MetaSPO (bilevel system-prompt optimization with meta-learning) for DSPy."""

import os as _os

# LiteLLM otherwise spends seconds trying to download its price list on first use.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from metaspo_dspy.adapters import ReferenceAdapter, with_system_prompt
from metaspo_dspy.finetune import finetune_adapter
from metaspo_dspy.meta_test import generate_user_prompts, test_time_adaptation, unseen_generalization
from metaspo_dspy.metrics import MetricError, TaskMetric
from metaspo_dspy.optimize.ape import APE
from metaspo_dspy.optimize.common import ConfigError
from metaspo_dspy.optimize.metaspo import MetaSPO, reference_bilevel_nodes
from metaspo_dspy.optimize.protegi import ProTeGi
from metaspo_dspy.optimize.sprig import SPRIG
from metaspo_dspy.program import MetaSPOProgram, SystemPrompt, WithSystemPrompt
from metaspo_dspy.scope import no_system_prompt, system_prompt_scope
from metaspo_dspy.tasks import Task, compile_kwargs, load_task, load_tasks, load_unseen_user_prompts, make_task

__all__ = [
    "APE",
    "SPRIG",
    "ConfigError",
    "MetaSPO",
    "MetaSPOProgram",
    "MetricError",
    "ProTeGi",
    "ReferenceAdapter",
    "SystemPrompt",
    "Task",
    "TaskMetric",
    "WithSystemPrompt",
    "compile_kwargs",
    "finetune_adapter",
    "generate_user_prompts",
    "load_task",
    "load_tasks",
    "load_unseen_user_prompts",
    "make_task",
    "no_system_prompt",
    "reference_bilevel_nodes",
    "system_prompt_scope",
    "test_time_adaptation",
    "unseen_generalization",
    "with_system_prompt",
]
__version__ = "0.1.0"
