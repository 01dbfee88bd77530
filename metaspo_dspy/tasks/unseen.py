"""The stored user prompts of the unseen-generalization protocol.

``{root}/unseen_user_prompts/<task>.json`` holds 30 APE-made user prompts per unseen task, as
the reference published them (``harmless.json`` belongs to ``antropic_harmless``); the protocol
uses the first 10. The reference repository states no licence, so they are not bundled:
``metaspo data fetch <task or domain>`` downloads them into the user cache. The roots searched are
those of the task files (:func:`~metaspo_dspy.tasks.sources.local.data_roots`). Each prompt ends with the
reference's raw-prompt suffix: the ``<Question>{question}</Question>`` slot and the task's
answer-format line. The DSPy format drops both (its adapter delimits the input and output
fields); the reference format keeps the text as is.
"""

from __future__ import annotations

import os
import warnings

from metaspo_dspy.errors import TaskLoadError
from metaspo_dspy.tasks.sampling import SampleSizeWarning
from metaspo_dspy.tasks.sources.local import cache_dir, data_roots, default_data_dir, find_file, read_json
from metaspo_dspy.tasks.specs import QUESTION_SLOT, get_spec

UNSEEN_FOLDER = "unseen_user_prompts"


def strip_reference_suffix(prompt: str, format_line: str = "") -> str:
    """A reference-format user prompt without its question slot and answer-format line.

    The slot (``<Question>{question}</Question>`` or a bare ``{question}``) is removed; text after
    it is dropped when it is ``format_line`` (or, without ``format_line``, when it is a single
    line), and kept otherwise.
    """
    slot = QUESTION_SLOT if QUESTION_SLOT in prompt else "{question}" if "{question}" in prompt else ""
    if not slot:
        return prompt.strip()
    head, tail = prompt.split(slot, 1)
    tail = tail.strip()
    if format_line and tail.startswith(format_line.strip()):
        tail = tail[len(format_line.strip()) :].strip()
    elif not format_line and "\n" not in tail:
        tail = ""
    return f"{head.strip()} {tail}".strip() if tail else head.strip()


def load_unseen_user_prompts(
    task: str, data_dir: str | os.PathLike | None = None, prompt_format: str = "dspy", num: int = 10
) -> list[str]:
    """The first ``num`` stored user prompts of an unseen task.

    DSPy format: slot and answer-format line stripped; reference format: verbatim. ``num`` above
    what is stored is capped with a :class:`SampleSizeWarning`. Raises :class:`TaskLoadError` for an
    unknown task, a malformed file (naming the path), or a missing file (with the default places:
    naming ``metaspo data fetch``; else naming the paths looked at).
    """
    if prompt_format not in ("dspy", "reference"):
        raise ValueError(f"prompt_format must be 'dspy' or 'reference', got {prompt_format!r}")
    try:
        spec = get_spec(task)
    except KeyError as exc:
        raise TaskLoadError(exc.args[0]) from None
    relative = f"{UNSEEN_FOLDER}/{spec.unseen_file or spec.name}.json"
    found = find_file(relative, data_dir)
    if found is None:
        if data_dir is None and default_data_dir() is None and not spec.unseen_file:
            raise TaskLoadError(
                f"task {spec.name!r} has no stored unseen user prompts (the reference published them for its unseen "
                "tasks only; use --user-prompts generate)"
            )
        if data_dir is None and default_data_dir() is None:
            raise TaskLoadError(
                f"task {spec.name!r}: the authors' unseen user prompts are not on this machine (not bundled: the "
                f"reference states no licence; not fetched into {cache_dir()}): run `metaspo data fetch {spec.name}` "
                "(or let metaspo generate user prompts: --user-prompts generate)"
            )
        places = ", ".join(str(root / relative) for _, root in data_roots(data_dir))
        raise TaskLoadError(f"task {spec.name!r} has no stored unseen user prompts: file not found: {places}")
    path = found[1]
    try:
        prompts = read_json(path)
    except TaskLoadError as exc:
        raise TaskLoadError(f"task {spec.name!r} has no stored unseen user prompts: {exc}") from None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise TaskLoadError(f"task {spec.name!r}: {path} must hold a JSON list of strings")
    if num > len(prompts):
        warnings.warn(
            f"task {spec.name!r}: {num} unseen user prompts asked, {len(prompts)} stored; using {len(prompts)}",
            SampleSizeWarning,
            stacklevel=2,
        )
    chosen = prompts[: max(num, 0)]
    if prompt_format == "reference":
        return list(chosen)
    return [strip_reference_suffix(p, spec.format_line) for p in chosen]
