"""``load_task`` / ``load_tasks``: a benchmark or generated task as a ready :class:`Task`.

Sources (``source=``):

* ``"local"``: ``{root}/{folder}/{task}.json`` in the reference's format, where the roots are
  ``data_dir`` if given, else ``$METASPO_DATA_DIR`` if set, else the user cache (what ``metaspo
  data fetch`` wrote) and then the data bundled in the package (:mod:`.local`, :mod:`.catalog`);
* ``"bigbench"``: the ``bigbench`` package's ``task.json`` files (BIG-bench tasks only);
* ``"hub"``: Hugging Face ``datasets`` (see :mod:`.hub` for ids and mappings); used only when
  asked for;
* ``"auto"`` (default): the local file if present, else the bigbench package for a BIG-bench
  task if installed; a task found nowhere is one error naming ``metaspo data fetch``.

A task loaded from the bundled or fetched data carries ``metadata["caveats"]``: how that data
differs from the paper's (:func:`~metaspo_dspy.tasks.provenance.caveats`).

Generated tasks (``gen_*``) need no source. Prompt formats (``prompt_format=``):

* ``"dspy"`` (default): signature ``question -> answer`` (plain ``str`` fields) whose instructions
  are the reference's base instruction; run it with any DSPy adapter; the metric normalises the
  ``answer`` field robustly (:mod:`.parsing`). Numbers measured this way are DSPy-format numbers,
  not comparable one-to-one with the paper's.
* ``"reference"``: signature ``question -> response`` whose instructions are the reference's full
  user prompt (base instruction + ``<Question>{question}</Question>`` + answer-format line); run it
  with :class:`~metaspo_dspy.program.adapters.ReferenceAdapter`; the metric applies the reference's parsing
  and quirks (:mod:`.reference_parsing`). This reproduces the paper's protocol.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from typing import Any

import dspy

from metaspo_dspy.errors import TaskLoadError
from metaspo_dspy.tasks.answers import parsing
from metaspo_dspy.tasks.answers.reference_parsing import REFERENCE_PARSERS
from metaspo_dspy.tasks.answers.scoring import build_metric
from metaspo_dspy.tasks.generated import generate_splits
from metaspo_dspy.tasks.provenance import caveats, data_info
from metaspo_dspy.tasks.sampling import sample_splits
from metaspo_dspy.tasks.sources.answer_kinds import check_rows
from metaspo_dspy.tasks.sources.bigbench import BIGBENCH_LAYOUT, bigbench_splits
from metaspo_dspy.tasks.sources.hub import HUB_SOURCES, hub_splits
from metaspo_dspy.tasks.sources.local import cache_dir, data_roots, default_data_dir, local_path, read_splits
from metaspo_dspy.tasks.specs import BENCHMARK_DOMAINS, TaskSpec, get_spec
from metaspo_dspy.tasks.task import Task

PROMPT_FORMATS = ("dspy", "reference")
SOURCES = ("auto", "local", "bigbench", "hub")
Splits = dict[str, list[dict[str, Any]]]


def task_signature(spec: TaskSpec, prompt_format: str = "dspy") -> type[dspy.Signature]:
    """The task's signature: ``question -> answer`` (DSPy format) or ``question -> response``
    (reference format, instructions = the reference's full user prompt)."""
    class_name = "".join(part.capitalize() for part in re.split(r"[^0-9a-zA-Z]+", spec.name)) + "Signature"
    if prompt_format == "dspy":
        fields = {
            "question": (str, dspy.InputField()),
            "answer": (str, dspy.OutputField(desc=spec.answer_desc)),
        }
        return dspy.make_signature(fields, spec.base_prompt, signature_name=class_name)
    fields = {"question": (str, dspy.InputField()), "response": (str, dspy.OutputField())}
    return dspy.make_signature(fields, spec.reference_prompt, signature_name=class_name)


def task_normalizer(spec: TaskSpec, prompt_format: str = "dspy"):
    """The one-argument normaliser of ``spec``'s answers in ``prompt_format``."""
    if prompt_format == "reference":
        return REFERENCE_PARSERS[spec.reference_parser]
    if spec.kind == "option":
        return functools.partial(parsing.parse_option, letters=spec.letters)
    return {
        "rating": parsing.parse_rating,
        "yesno": parsing.parse_yes_no,
        "span": parsing.parse_span,
    }.get(spec.kind, parsing.normalize_text)


def to_example(row: dict[str, Any]) -> dspy.Example:
    """A reference-format row as an example: ``question`` input, ``answer`` (as text) or
    ``answers`` (list) label. Extra row keys are not copied."""
    if "answers" in row and isinstance(row["answers"], list):
        return dspy.Example(question=row["question"], answers=[str(a) for a in row["answers"]]).with_inputs("question")
    return dspy.Example(question=row["question"], answer=str(row["answer"])).with_inputs("question")


def missing_task_error(spec: TaskSpec) -> TaskLoadError:
    """The one-line error for a task found in none of the default places (cache, bundled)."""
    domain = spec.domain if spec.domain in BENCHMARK_DOMAINS else spec.name
    return TaskLoadError(
        f"task {spec.name!r} is not on this machine (not bundled, licence: {data_info(spec.name).licence}; not "
        f"fetched into {cache_dir()}): run `metaspo data fetch {domain}` (or give --data-dir DIR)"
    )


def fetch_splits(
    spec: TaskSpec,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    bigbench_root: str | os.PathLike | None = None,
    hub_limit: int | None = 2000,
) -> tuple[Splits, dict[str, Any]]:
    """``spec``'s full train/test rows and where they came from.

    ``local`` looks in :func:`~metaspo_dspy.tasks.sources.local.data_roots` (``data_dir``, else
    ``$METASPO_DATA_DIR``, else the user cache then the bundled data); ``auto`` does the same, then
    the bigbench package for a BIG-bench task -- never the hub, which is used only when asked
    (``source="hub"``). The metadata names the file and its ``origin`` (``fetched``, ``bundled``,
    ``data_dir`` or ``$METASPO_DATA_DIR``).

    Raises :class:`TaskLoadError`: with the default places, one line naming the task and the
    ``metaspo data fetch`` command; otherwise naming the task and every place looked. A local
    file that exists but is malformed raises at once.
    """
    tried: list[str] = []
    default_places = data_dir is None and default_data_dir() is None
    if source in ("auto", "local"):
        for kind, root in data_roots(data_dir):
            path = local_path(root, spec.folder, spec.name)
            if os.path.isfile(path):  # Path.is_file raises for an overlong name on Python 3.11
                return read_splits(path, spec.name), {"source": "local", "path": str(path), "origin": kind}
            tried.append(f"{kind}: {path} (not found)")
    if source in ("auto", "bigbench"):
        if spec.name in BIGBENCH_LAYOUT:
            try:
                return bigbench_splits(spec.name, bigbench_root), {"source": "bigbench", "task": spec.name}
            except TaskLoadError as exc:
                tried.append(f"bigbench package: {exc}")
        elif source == "bigbench":
            tried.append("bigbench package: not a BIG-bench task")
    if source == "hub":
        try:
            splits = hub_splits(spec.name, hub_limit)
            return splits, {"source": "hub", "dataset": HUB_SOURCES[spec.name].describe()}
        except TaskLoadError as exc:
            tried.append(f"Hugging Face hub: {exc}")
    if source == "auto" and default_places:
        raise missing_task_error(spec)
    raise TaskLoadError(
        f"task {spec.name!r} could not be loaded (source={source!r}); looked in:\n  - " + "\n  - ".join(tried)
    )


def _origin(metadata: dict[str, Any] | None) -> str:
    """Where rows came from, for error messages: the file, else the dataset or source."""
    metadata = metadata or {}
    if metadata.get("path"):
        return str(metadata["path"])
    if metadata.get("dataset"):
        return f"Hugging Face dataset {metadata['dataset']}"
    if metadata.get("task"):
        return f"the bigbench package's task {metadata['task']}"
    return f"{metadata.get('source', 'the')} source"


def _caveat_info(spec: TaskSpec, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """``{"caveats": [...]}`` for rows from our bundled or fetched data, else nothing."""
    if (metadata or {}).get("origin") in ("bundled", "fetched"):
        return {"caveats": [str(c) for c in caveats(spec.name, origin=metadata["origin"])]}  # type: ignore[index]
    return {}


def build_task(
    spec: TaskSpec,
    splits: Splits,
    prompt_format: str = "dspy",
    train_size: int | None = 50,
    test_size: int | None = 500,
    seed: int | None = 42,
    metadata: dict[str, Any] | None = None,
) -> Task:
    """A :class:`Task` from full splits: sampled as the reference does, then wrapped.

    Every row is checked first (:func:`~metaspo_dspy.tasks.sources.answer_kinds.check_rows`): a row without a
    string question or with an answer of the wrong type for ``spec`` raises :class:`TaskLoadError`.
    """
    check_rows(spec, splits, _origin(metadata))
    if not splits.get("train") and not splits.get("test"):
        raise TaskLoadError(f"task {spec.name!r}: no examples in {metadata or 'the source'}")
    train_rows, test_rows = sample_splits(
        splits.get("train", []), splits.get("test", []), train_size, test_size, seed, spec.name
    )
    info = {
        **(metadata or {}),
        **_caveat_info(spec, metadata),
        "role": spec.role,
        "available": {"train": len(splits.get("train", [])), "test": len(splits.get("test", []))},
        "seed": seed,
        "train_size": len(train_rows),
        "test_size": len(test_rows),
    }
    return Task(
        name=spec.name,
        signature=task_signature(spec, prompt_format),
        metric=build_metric(spec, prompt_format),
        train=[to_example(r) for r in train_rows],
        test=[to_example(r) for r in test_rows],
        domain=spec.domain,
        prompt_format=prompt_format,  # type: ignore[arg-type]
        prompt_suffix=spec.suffix if prompt_format == "reference" else "",
        normalize=task_normalizer(spec, prompt_format),
        metadata=info,
    )


def load_task(
    name: str,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    prompt_format: str = "dspy",
    train_size: int | None = 50,
    test_size: int | None = 500,
    seed: int | None = 42,
    *,
    bigbench_root: str | os.PathLike | None = None,
    hub_limit: int | None = 2000,
    generator_seed: int = 0,
) -> Task:
    """Load one task (any of the 35 benchmark tasks, an alias such as ``anthropic_harmless``, or a
    generated ``gen_*`` task).

    Args:
        name: task name.
        data_dir: folder in the reference's layout (default: ``$METASPO_DATA_DIR`` if set, else
            the user cache then the bundled data).
        source: ``auto``, ``local``, ``bigbench`` or ``hub`` (ignored by generated tasks).
        prompt_format: ``dspy`` or ``reference`` (see the module docstring).
        train_size, test_size: cut sizes (None = all); capped at what exists, with a warning.
        seed: the run seed for the train shuffle (None = no shuffle); the test shuffle always
            uses 42, as in the reference.
        bigbench_root: a ``benchmark_tasks`` folder to use instead of the installed package.
        hub_limit: rows read per hub split (None = all).
        generator_seed: seed of a generated task's pool.

    Raises:
        TaskLoadError: unknown task (with suggestions), or no source has it (with the default
            places: naming ``metaspo data fetch``; else naming every place looked), or malformed
            data.
        ValueError: a bad ``source``, ``prompt_format`` or size.
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    try:
        spec = get_spec(name)
    except KeyError as exc:
        raise TaskLoadError(exc.args[0]) from None
    if spec.domain == "generated":
        splits = generate_splits(spec.name, generator_seed)
        metadata = {"source": "generated", "generator_seed": generator_seed}
    else:
        splits, metadata = fetch_splits(spec, data_dir, source, bigbench_root, hub_limit)
    return build_task(spec, splits, prompt_format, train_size, test_size, seed, metadata)


def load_tasks(names: str | Iterable[str], **kwargs: Any) -> list[Task]:
    """:func:`load_task` for each name (a single name is accepted too); same keyword arguments."""
    if isinstance(names, str):
        names = [names]
    return [load_task(name, **kwargs) for name in names]
