"""Task suites: the 35 MetaSPO benchmark tasks, a generated offline family, and your own tasks.

    from metaspo_dspy.tasks import load_task, load_tasks, compile_kwargs
    tasks = load_tasks(SOURCE_TASKS["medical"])        # bundled with the package
    fetch_data(["review"])                             # = `metaspo data fetch review`, into the user cache
    tasks = load_tasks(SOURCE_TASKS["review"])
    MetaSPO(...).compile(**compile_kwargs(tasks))

See :mod:`.loader` for sources and prompt formats, :mod:`.local` for where task files are looked
for, :mod:`.catalog` for each task's source, licence and caveats, :mod:`.fetch` for ``metaspo data
fetch``, :mod:`.hub` for the Hugging Face mappings, :mod:`.generated` for the offline family and
:mod:`.custom` for tasks made from your examples.
"""

from metaspo_dspy.tasks.base import PromptFormat, Task, compile_kwargs, input_names
from metaspo_dspy.tasks.catalog import DATA_INFO, Caveat, DataInfo, availability, caveats, data_info
from metaspo_dspy.tasks.custom import ExactMatch, make_task
from metaspo_dspy.tasks.fetch import DataFetchError, FetchRecord, fetch_data
from metaspo_dspy.tasks.generated import GENERATED_SOURCE_TASKS, GENERATED_TASKS, GENERATED_UNSEEN_TASKS
from metaspo_dspy.tasks.loader import PROMPT_FORMATS, SOURCES, load_task, load_tasks
from metaspo_dspy.tasks.local import BUNDLED_DIR, TaskLoadError, cache_dir, data_roots, default_data_dir
from metaspo_dspy.tasks.sampling import SampleSizeWarning
from metaspo_dspy.tasks.scoring import macro_f1
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
from metaspo_dspy.tasks.unseen import load_unseen_user_prompts, strip_reference_suffix

SOURCE_TASKS["generated"] = GENERATED_SOURCE_TASKS
UNSEEN_TASKS["generated"] = GENERATED_UNSEEN_TASKS
DOMAIN_TASKS["generated"] = GENERATED_TASKS
#: every registered task name (35 benchmark tasks + the generated family)
TASKS = SPECS
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
    "TASKS",
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
