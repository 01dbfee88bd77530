"""Task suites: the 35 MetaSPO benchmark tasks, a generated offline family, and your own tasks.

    from metaspo_dspy.tasks import load_task, load_tasks, compile_kwargs
    tasks = load_tasks(SOURCE_TASKS["medical"])        # bundled with the package
    fetch_data(["review"])                             # = `metaspo data fetch review`, into the user cache
    tasks = load_tasks(SOURCE_TASKS["review"])
    MetaSPO(...).compile(**compile_kwargs(tasks))

Every registered task (the 35 benchmark tasks and the generated family) is in :data:`SPECS`.
See :mod:`.loader` for sources and prompt formats, :mod:`.sources.local` for where task files are
looked for, :mod:`.provenance` for each task's source, licence and caveats, :mod:`.sources.fetch`
for ``metaspo data fetch``, :mod:`.sources.hub` for the Hugging Face mappings, :mod:`.generated`
for the offline family (it registers itself with :func:`.specs.register_spec`) and :mod:`.task`
for tasks made from your examples.
"""

from metaspo_dspy.errors import TaskLoadError
from metaspo_dspy.tasks.answers.scoring import macro_f1
from metaspo_dspy.tasks.generated import GENERATED_SOURCE_TASKS, GENERATED_TASKS, GENERATED_UNSEEN_TASKS
from metaspo_dspy.tasks.loader import PROMPT_FORMATS, SOURCES, load_task, load_tasks
from metaspo_dspy.tasks.provenance import DATA_INFO, Caveat, DataInfo, availability, caveats, data_info
from metaspo_dspy.tasks.sampling import SampleSizeWarning
from metaspo_dspy.tasks.sources.fetch import DataFetchError, FetchRecord, fetch_data
from metaspo_dspy.tasks.sources.local import BUNDLED_DIR, cache_dir, data_roots, default_data_dir
from metaspo_dspy.tasks.specs import (
    ALIASES,
    BENCHMARK_DOMAINS,
    DOMAIN_TASKS,
    GROUNDING_TASKS,
    MEDICAL_TASKS,
    REASONING_TASKS,
    REVIEW_TASKS,
    SAFETY_TASKS,
    SOURCE_TASKS,
    SPECS,
    UNSEEN_TASKS,
    TaskSpec,
    canonical_name,
    get_spec,
)
from metaspo_dspy.tasks.task import ExactMatch, PromptFormat, Task, compile_kwargs, input_names, make_task
from metaspo_dspy.tasks.unseen import load_unseen_user_prompts, strip_reference_suffix

#: the 35 benchmark task names
BENCHMARK_TASKS: tuple[str, ...] = tuple(n for n, s in SPECS.items() if s.domain in BENCHMARK_DOMAINS)
DOMAINS: tuple[str, ...] = (*BENCHMARK_DOMAINS, "generated")

__all__ = [
    "ALIASES",
    "BENCHMARK_DOMAINS",
    "BENCHMARK_TASKS",
    "BUNDLED_DIR",
    "DATA_INFO",
    "DOMAINS",
    "DOMAIN_TASKS",
    "GENERATED_SOURCE_TASKS",
    "GENERATED_TASKS",
    "GENERATED_UNSEEN_TASKS",
    "GROUNDING_TASKS",
    "MEDICAL_TASKS",
    "PROMPT_FORMATS",
    "REASONING_TASKS",
    "REVIEW_TASKS",
    "SAFETY_TASKS",
    "SOURCES",
    "SOURCE_TASKS",
    "SPECS",
    "UNSEEN_TASKS",
    "Caveat",
    "DataFetchError",
    "DataInfo",
    "ExactMatch",
    "FetchRecord",
    "PromptFormat",
    "SampleSizeWarning",
    "Task",
    "TaskLoadError",
    "TaskSpec",
    "availability",
    "cache_dir",
    "canonical_name",
    "caveats",
    "compile_kwargs",
    "data_info",
    "data_roots",
    "default_data_dir",
    "fetch_data",
    "get_spec",
    "input_names",
    "load_task",
    "load_tasks",
    "load_unseen_user_prompts",
    "macro_f1",
    "make_task",
    "strip_reference_suffix",
]
