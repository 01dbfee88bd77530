"""The system prompt as a DSPy parameter, a wrapper that applies it, and MetaSPO's result program.

* :class:`SystemPrompt` -- a ``dspy`` ``Parameter`` holding the system-prompt text and where the
  user prompt (signature instructions) is placed. ``Module.save``/``load`` carry it; ``deepcopy``
  and ``reset_copy`` keep it (``reset`` is a no-op: the text is configuration, not a cache).
* :class:`WithSystemPrompt` -- runs any DSPy program so that every predictor call carries the
  system prompt, through a scoped ``dspy.context(adapter=...)`` (never ``dspy.configure``), so it
  never reaches LM calls outside that program run.
* :class:`MetaSPOProgram` -- one system prompt plus one program per task, as ``compile`` returns it.
"""

from __future__ import annotations

import copy
import json
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dspy
from dspy.predict.parameter import Parameter

from metaspo_dspy.program.adapters import ADAPTERS, InstructionsIn, adapter_name, make_adapter, with_system_prompt
from metaspo_dspy.program.scope import system_prompt_scope
from metaspo_dspy.program.spec import program_from_spec, program_spec
from metaspo_dspy.store.io import USER_FILE_MAX_BYTES, atomic_write_text, read_named_file, shown

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
PROGRAM_FORMAT = "metaspo-dspy/program/v1"
#: the longest system prompt :meth:`SystemPrompt.load` accepts by default: the search's own
#: ``max_prompt_chars`` default (a longer initial prompt is refused there too)
MAX_PROMPT_CHARS = 8000
#: the largest file :meth:`SystemPrompt.load` reads (a run artifact holding the prompt can be large)
PROMPT_FILE_MAX_BYTES = USER_FILE_MAX_BYTES


def has_visible_text(text: str) -> bool:
    """Whether ``text`` holds a character one can see: not only whitespace, control or format
    characters (a NUL byte, a zero-width space...)."""
    return any(unicodedata.category(ch)[0] not in "CZ" for ch in text)


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be a prompt, or None: no visible character, or a lone surrogate (a
    broken ``\\ud83d``-style escape), which no model request can carry."""
    if not has_visible_text(text):
        return "has no visible text (only control or format characters)" if text.strip() else "is empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate {text[exc.start]!r} at character {exc.start} (a broken escape)"
    return None


class SystemPrompt(Parameter):
    """A system prompt that DSPy treats as a program parameter.

    Args:
        text: the system prompt.
        instructions_in: where each predictor's instructions (the MetaSPO *user prompt*) go:
            ``"user"`` (start of the user message, as in MetaSPO; the default) or ``"system"``
            (DSPy's own placement, after the field structure in the system message).
    """

    def __init__(self, text: str = DEFAULT_SYSTEM_PROMPT, instructions_in: InstructionsIn = "user"):
        if not isinstance(text, str):
            raise TypeError(f"SystemPrompt text must be a string, got {type(text).__name__}")
        if instructions_in not in ("user", "system"):
            raise ValueError(f"instructions_in must be 'user' or 'system', got {instructions_in!r}")
        self.text = text
        self.instructions_in: InstructionsIn = instructions_in

    def reset(self) -> None:
        """Keep the text: ``reset_copy`` must not erase an optimized system prompt."""

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        return {"text": self.text, "instructions_in": self.instructions_in}

    def load_state(self, state: Mapping[str, Any]) -> SystemPrompt:
        if not isinstance(state, Mapping) or not isinstance(state.get("text"), str):
            raise ValueError(f"not a SystemPrompt state: {state!r:.200}")
        self.text = state["text"]
        self.instructions_in = state.get("instructions_in", "user")
        return self

    def adapter(self, base: dspy.Adapter | None = None) -> dspy.Adapter:
        """``base`` (default: the configured adapter, else ChatAdapter) carrying this prompt."""
        return with_system_prompt(base or dspy.settings.adapter, self.text, self.instructions_in)

    def save(self, path: str | Path) -> None:
        """Write ``{"system_prompt": {...}}`` as JSON (``.json``) or the bare text (other suffixes)."""
        path = Path(path)
        if path.suffix == ".json":
            atomic_write_text(path, json.dumps({"system_prompt": self.dump_state()}, indent=2, ensure_ascii=False))
        else:
            atomic_write_text(path, self.text + "\n")

    @classmethod
    def load(cls, path: str | Path, max_chars: int | None = MAX_PROMPT_CHARS) -> SystemPrompt:
        """Read a system prompt from any file a user is likely to hold.

        Accepted: a saved :class:`MetaSPOProgram` or any ``Module.save`` JSON containing a
        SystemPrompt; ``SystemPrompt.save`` output; the reference's ``bilevel_nodes_*.json``
        (``optimized_system_prompt``) and ``prompts/*.json`` (``prompt``); a MetaSPO run artifact
        (``optimized_system_prompt``); or a plain-text file (its whole text, stripped).

        The file must be a regular UTF-8 file of at most :data:`PROMPT_FILE_MAX_BYTES` (read
        without blocking: a FIFO or a device such as ``/dev/zero`` is refused, never read), and the
        prompt must have visible text (:func:`has_visible_text`) of at most ``max_chars``
        characters (default :data:`MAX_PROMPT_CHARS`, the search's ``max_prompt_chars``; None: no
        limit). Raises ``ValueError`` naming the file and what was expected when any of this fails.
        """
        path = Path(path)
        raw = read_named_file(path, "system prompt file", max_bytes=PROMPT_FILE_MAX_BYTES)  # a BOM dropped
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = None
        if data is None or isinstance(data, str):
            text = raw.strip() if data is None else data.strip()
            _check_loaded(text, f"system prompt file {shown(path)}", max_chars)
            return cls(text)
        state = _find_system_prompt_state(data)
        if state is None:
            raise ValueError(
                f"no system prompt found in {shown(path)}: expected a saved MetaSPO program, a "
                "'system_prompt' entry, 'optimized_system_prompt' (reference bilevel_nodes / run "
                "artifact) or 'prompt' (reference prompts/*.json), or a plain-text file"
            )
        _check_loaded(state["text"], f"the system prompt in {shown(path)}", max_chars)
        return cls().load_state(state)

    def __repr__(self) -> str:
        return f"SystemPrompt({self.text!r}, instructions_in={self.instructions_in!r})"

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SystemPrompt):
            return NotImplemented
        return self.dump_state() == other.dump_state()

    __hash__ = None  # mutable


def _check_loaded(text: str, what: str, max_chars: int | None) -> None:
    """Raise ``ValueError`` unless ``text`` (from ``what``) can be a system prompt."""
    problem = text_problem(text)
    if problem == "is empty":
        raise ValueError(f"{what} is empty; write the system prompt text into it")
    if problem:
        raise ValueError(f"{what} {problem}; write the system prompt text into it")
    if max_chars is not None and len(text) > max_chars:
        raise ValueError(
            f"{what} has {len(text):,} characters, more than max_prompt_chars={max_chars:,} (the longest "
            "system prompt a search keeps); shorten it"
        )


def _is_state(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("text"), str) and "instructions_in" in value


def _find_system_prompt_state(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, Mapping):
        return None
    for key in ("optimized_system_prompt", "prompt"):
        if isinstance(data.get(key), str):
            return {"text": data[key], "instructions_in": "user"}
    if isinstance(data.get("system_prompt"), str):
        return {"text": data["system_prompt"], "instructions_in": "user"}
    found = [value for value in data.values() if _is_state(value)]
    if found:
        return dict(found[0])
    return None


def as_system_prompt(value: SystemPrompt | str | None) -> SystemPrompt:
    """Coerce a string (or None: the default prompt) into a :class:`SystemPrompt`."""
    if value is None:
        return SystemPrompt()
    if isinstance(value, SystemPrompt):
        return value
    if isinstance(value, str):
        return SystemPrompt(value)
    raise TypeError(f"expected a SystemPrompt or a string, got {type(value).__name__}")


class WithSystemPrompt(dspy.Module):
    """Run ``program`` with ``system_prompt`` at the start of every predictor's system message.

    The prompt is applied with :func:`~metaspo_dspy.program.scope.system_prompt_scope` around the wrapped
    program's run, on top of ``adapter`` (default: whatever adapter is configured when it runs,
    else ``ChatAdapter``), so it also reaches the JSON fallback and adapters the program picks
    itself inside ``forward``, and never reaches LM calls made outside this run. The wrapped
    program is used as given (not copied, not modified).

    A :class:`SystemPrompt` given is copied, so loading or editing this wrapper's prompt
    (``wrapper.load(path)``, ``wrapper.system_prompt.text = ...``) never changes the object passed
    in (e.g. ``best.system_prompt``), nor the other way round; ``share=True`` keeps that very object
    instead, so a change on either side is seen by both (``MetaSPOProgram.for_task`` shares).

    Nesting: ``WithSystemPrompt(WithSystemPrompt(p, inner), outer)`` sends ``inner`` -- the system
    prompt closest to the predictors wins, as the innermost ``dspy.context`` does.

    Programs compiled by other optimizers (``_compiled=True``, e.g. BootstrapFewShot's output): the
    wrapper behaves as the program it wraps. It sees through the mark -- ``named_parameters()``,
    ``named_predictors()``, ``dump_state``/``load_state`` and so ``save``/``load`` include the
    wrapped program's predictors (demos and instructions) -- and carries it: the wrapper is itself
    marked compiled, so inside a larger program DSPy keeps it frozen exactly as it would keep the
    bare program, while an optimizer given the wrapper itself (GEPA, MIPROv2) optimizes it as it
    would the bare program.
    """

    def __init__(
        self,
        program: dspy.Module,
        system_prompt: SystemPrompt | str,
        adapter: dspy.Adapter | str | None = None,
        share: bool = False,
    ):
        super().__init__()
        if not isinstance(program, dspy.Module):
            raise TypeError(f"WithSystemPrompt wraps a dspy.Module, got {type(program).__name__}")
        self.program = program
        prompt = as_system_prompt(system_prompt)
        self.system_prompt = copy.deepcopy(prompt) if isinstance(system_prompt, SystemPrompt) and not share else prompt
        self.adapter = make_adapter(adapter)
        self._compiled = bool(getattr(program, "_compiled", False))

    def named_parameters(self):
        return _see_through(super().named_parameters(), {"program": self.program})

    def forward(self, *args, **kwargs):
        with system_prompt_scope(self.system_prompt.text, self.system_prompt.instructions_in, self.adapter):
            return self.program(*args, **kwargs)

    async def aforward(self, *args, **kwargs):
        with system_prompt_scope(self.system_prompt.text, self.system_prompt.instructions_in, self.adapter):
            return await self.program.acall(*args, **kwargs)


def _see_through(found: list[tuple[str, Any]], inner: Mapping[str, dspy.Module]) -> list[tuple[str, Any]]:
    """``found`` (a DSPy ``named_parameters()`` list) plus the parameters of the ``inner``
    programs (``{name prefix: program}``) that DSPy skipped because they are marked compiled."""
    seen = {id(param) for _, param in found}
    extra = []
    for prefix, program in inner.items():
        if getattr(program, "_compiled", False) and not isinstance(program, Parameter):
            for name, param in program.named_parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    extra.append((f"{prefix}.{name}", param))
    return found + extra


def unwrap(program: dspy.Module) -> tuple[dspy.Module, SystemPrompt | None, dspy.Adapter | None]:
    """``(inner program, system prompt, adapter)`` of a (possibly nested) :class:`WithSystemPrompt`:
    the innermost program, the system prompt its calls carry (the innermost wrapper's) and the base
    adapter they use (the innermost wrapper's that sets one). A bare program gives ``(program,
    None, None)``. Nothing is copied or modified."""
    prompt = adapter = None
    while isinstance(program, WithSystemPrompt):
        prompt = program.system_prompt
        adapter = program.adapter if program.adapter is not None else adapter
        program = program.program
    return program, prompt, adapter


class MetaSPOProgram(dspy.Module):
    """One optimized system prompt and, per task, that task's program with its best user prompt(s).

    ``program(task="beauty", **inputs)`` runs the task's program under the system prompt (a program
    with an input field named ``task``: ``program("beauty", task=..., **inputs)``);
    ``program.tasks["beauty"]`` is the bare task program (no system prompt: wrap it with
    :class:`WithSystemPrompt` or call :meth:`for_task`); ``detailed_results`` holds the run's
    history (see ``MetaSPO``). ``adapter`` is the base adapter its calls use: for ``compile``'s
    result the one in effect during ``compile`` (the teleprompter's ``adapter=`` or the wrapped task
    programs', else the configured one; None when none was set: the adapter configured when it
    runs, else ChatAdapter). ``save("x.json")`` writes a ``Module.save``-compatible JSON that also
    records that adapter, each task program's structure and the run history, so :meth:`from_file`
    can rebuild it and run it in the same format. Task programs marked compiled by another
    optimizer are seen through (their predictors are saved and loaded) and keep their mark, as in
    :class:`WithSystemPrompt`.
    """

    def __init__(
        self,
        system_prompt: SystemPrompt | str,
        tasks: Mapping[str, dspy.Module],
        adapter: dspy.Adapter | str | None = None,
        detailed_results: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.system_prompt = as_system_prompt(system_prompt)
        self.tasks = dict(tasks)
        self.adapter = make_adapter(adapter)
        self.detailed_results = detailed_results or {}

    def for_task(self, task: str) -> WithSystemPrompt:
        """The task's program wrapped with this system prompt and adapter; a view: it shares the
        task program and the :class:`SystemPrompt` object with this program."""
        return WithSystemPrompt(self._task(task), self.system_prompt, self.adapter, share=True)

    def _task(self, task: str) -> dspy.Module:
        try:
            return self.tasks[task]
        except KeyError:
            raise ValueError(f"unknown task {task!r}; this program has {sorted(self.tasks)}") from None

    def named_parameters(self):
        inner = {f"tasks['{name}']": program for name, program in self.tasks.items()}
        return _see_through(super().named_parameters(), inner)

    def _split(self, args: tuple, inputs: dict[str, Any]) -> tuple[dspy.Module, dict[str, Any]]:
        """The task program and its inputs: ``(task="t", **inputs)``, or ``("t", **inputs)`` when
        the program has an input field named ``task`` itself."""
        if len(args) > 1:
            raise TypeError(f"call with the task name and keyword inputs, got {len(args)} positional arguments")
        if args:
            return self._task(args[0]), inputs
        if "task" not in inputs:
            raise TypeError(f"name the task: program(task=..., **inputs), one of {sorted(self.tasks)}")
        inputs = dict(inputs)
        return self._task(inputs.pop("task")), inputs

    def forward(self, *args, **inputs):
        program, inputs = self._split(args, inputs)
        with system_prompt_scope(self.system_prompt.text, self.system_prompt.instructions_in, self.adapter):
            return program(**inputs)

    async def aforward(self, *args, **inputs):
        program, inputs = self._split(args, inputs)
        with system_prompt_scope(self.system_prompt.text, self.system_prompt.instructions_in, self.adapter):
            return await program.acall(**inputs)

    def save(self, path, save_program: bool = False, modules_to_serialize=None) -> None:
        """Save as JSON (atomic). Other suffixes and ``save_program=True`` defer to ``Module.save``."""
        path = Path(path)
        if save_program or path.suffix != ".json":
            return super().save(path, save_program=save_program, modules_to_serialize=modules_to_serialize)
        from dspy.utils.saving import get_dependency_versions

        state = self.dump_state()
        state["metadata"] = {"dependency_versions": get_dependency_versions()}
        state["metaspo"] = {
            "format": PROGRAM_FORMAT,
            "adapter": adapter_name(self.adapter),
            "programs": {task: program_spec(program) for task, program in self.tasks.items()},
            "detailed_results": self.detailed_results,
        }
        atomic_write_text(path, json.dumps(state, indent=2, ensure_ascii=False, default=str))

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        programs: dspy.Module | Mapping[str, dspy.Module] | None = None,
        adapter: dspy.Adapter | None = None,
    ) -> MetaSPOProgram:
        """Rebuild a program written by :meth:`save`.

        ``programs`` gives task programs' structure: one module for every task, or
        ``{task: module}`` for some of them (a name the file does not hold is a ``ValueError``);
        they are deep-copied, never modified. Each task not given is rebuilt from the structure
        recorded at save time, which works for ``Predict`` and ``ChainOfThought`` programs whose
        field types are builtins, lists or literals; for other programs a ``ValueError`` asks for
        them in ``programs=``.

        The program runs with the adapter recorded in the file, rebuilt by name (``chat``,
        ``json``, ``xml``, ``reference``; ``default``: none). Any other adapter class (your own, or
        one that needs arguments such as ``TwoStepAdapter``) is recorded by its class path and
        cannot be rebuilt from the file: pass an instance as ``adapter=``. An ``adapter=`` of
        another class than the recorded one is a ``ValueError``: the prompts were scored in the
        recorded format.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path} does not exist") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a saved MetaSPO program: {exc}") from None
        meta = data.get("metaspo") if isinstance(data, dict) else None
        if not isinstance(meta, dict) or meta.get("format") != PROGRAM_FORMAT:
            raise ValueError(f"{path} is not a saved MetaSPO program (written by MetaSPOProgram.save)")
        if isinstance(programs, Mapping):
            unknown = sorted(set(programs) - set(meta["programs"]))
            if unknown:
                raise ValueError(
                    f"programs= names tasks that {path} does not hold: {unknown}; it holds {sorted(meta['programs'])}"
                )
        tasks: dict[str, dspy.Module] = {}
        for task, spec in meta["programs"].items():
            template = programs if isinstance(programs, dspy.Module) else (programs or {}).get(task)
            if template is not None:
                tasks[task] = template.deepcopy()
            elif spec is None:
                raise ValueError(
                    f"the program of task {task!r} in {path} cannot be rebuilt from the file alone; "
                    "pass its structure: MetaSPOProgram.from_file(path, programs={task: module})"
                )
            else:
                tasks[task] = program_from_spec(spec)
        result = cls(
            SystemPrompt(),
            tasks,
            adapter=_saved_adapter(path, meta.get("adapter"), adapter),
            detailed_results=meta.get("detailed_results") or {},
        )
        state = {k: v for k, v in data.items() if k not in ("metadata", "metaspo")}
        result.load_state(state)
        return result

    def deepcopy(self) -> MetaSPOProgram:
        new = super().deepcopy()
        new.detailed_results = copy.deepcopy(self.detailed_results)
        return new


def _saved_adapter(path: Path, recorded: Any, given: dspy.Adapter | None) -> dspy.Adapter | None:
    """The adapter a program saved in ``path`` runs with (see :meth:`MetaSPOProgram.from_file`):
    ``given``, which must be of the ``recorded`` class, else the recorded one rebuilt by name."""
    if given is not None:
        if adapter_name(given) != recorded:
            raise ValueError(
                f"{path} records adapter {recorded!r}, the format its prompts were scored in; adapter= is "
                f"{adapter_name(given)!r}"
            )
        return given
    if recorded is None or recorded == "default" or recorded in ADAPTERS:
        return make_adapter(recorded)
    raise ValueError(
        f"{path} records adapter {recorded!r}, which cannot be rebuilt from the file (only "
        f"{', '.join(ADAPTERS)} can); pass an instance of it: MetaSPOProgram.from_file(path, adapter=...)"
    )
