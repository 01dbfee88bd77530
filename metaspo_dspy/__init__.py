"""metaspo-dspy: MetaSPO (bilevel system-prompt optimization with meta-learning) for DSPy."""

import os as _os

# LiteLLM otherwise spends seconds trying to download its price list when it is first imported. The
# one place this is set: the package root runs before any of its modules, so before any litellm
# import in the CLI, the worker processes and the forkserver preload (tests/test_house.py).
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from metaspo_dspy.errors import (
    ConfigError,
    MetaSPOError,
    MetricError,
    NothingParsed,
    TooManyFailures,
    WorkerDied,
)
from metaspo_dspy.meta_test import generate_user_prompts, test_time_adaptation, unseen_generalization
from metaspo_dspy.optimize.baselines.ape import APE
from metaspo_dspy.optimize.baselines.protegi import ProTeGi
from metaspo_dspy.optimize.engine.artifact import reference_bilevel_nodes
from metaspo_dspy.optimize.metaspo.teleprompter import MetaSPO
from metaspo_dspy.optimize.sprig.teleprompter import SPRIG
from metaspo_dspy.program.adapters import ReferenceAdapter, with_system_prompt
from metaspo_dspy.program.finetune import finetune_adapter
from metaspo_dspy.program.metrics import TaskMetric
from metaspo_dspy.program.scope import no_system_prompt, system_prompt_scope
from metaspo_dspy.program.system_prompt import MetaSPOProgram, SystemPrompt, WithSystemPrompt
from metaspo_dspy.tasks import Task, compile_kwargs, load_task, load_tasks, load_unseen_user_prompts, make_task
from metaspo_dspy.version import __version__

__all__ = [
    "APE",
    "SPRIG",
    "ConfigError",
    "MetaSPO",
    "MetaSPOError",
    "MetaSPOProgram",
    "MetricError",
    "NothingParsed",
    "ProTeGi",
    "ReferenceAdapter",
    "SystemPrompt",
    "Task",
    "TaskMetric",
    "TooManyFailures",
    "WithSystemPrompt",
    "WorkerDied",
    "__version__",
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
