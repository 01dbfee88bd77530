"""Every error metaspo-dspy raises on purpose, in one hierarchy.

``MetaSPOError`` (a ``ValueError``) is bad input or an environment the library cannot use: a
config value, a model that cannot be built, a metric that breaks its contract, task data that
cannot be loaded, a run directory that cannot be used, a program that cannot go to a worker
process, a file that is not UTF-8. Each message names the problem and the fix; the CLI reports
any of them as one ``error:`` line (exit 2) by catching this one base.

Errors that are not bad input keep the base Python gives their kind: ``TooManyFailures`` (and
``NothingParsed``, ``WorkerDied``) are ``RuntimeError``\\ s -- the models (or a worker process)
failed while the run went on, the run is resumable; the ``*Unavailable`` errors for missing
optional packages are ``ImportError``\\ s and live next to what they guard.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

#: byte-order marks of UTF-16 text (a common reason a file is not UTF-8)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class MetaSPOError(ValueError):
    """Bad input or an unusable environment; the message names the problem and the fix."""


class ConfigError(MetaSPOError):
    """Bad arguments to an optimizer; the message names the problem and the fix."""


class ModelConfigError(MetaSPOError):
    """An LM cannot be built from these settings; the message says how to fix it."""


class MetricError(MetaSPOError):
    """A metric raised or returned something that is not a score in [0, 1]."""


class TaskLoadError(MetaSPOError):
    """A task could not be loaded; the message names the task and every place that was tried."""


class RunDirError(MetaSPOError):
    """The run directory cannot be used as asked (exists, not writable, incompatible settings)."""


class ProcessError(MetaSPOError):
    """A grid cannot run in worker processes; the message says why and what to do."""


class NotUtf8Error(MetaSPOError):
    """A text file that is not UTF-8; the message names the file, the offending byte and the fix."""

    def __init__(self, path: str | Path, data: bytes, exc: UnicodeDecodeError):
        if data.startswith(_UTF16_BOMS):
            what = "it is UTF-16 encoded"
        else:
            what = f"byte 0x{data[exc.start]:02x} at offset {exc.start} is not valid UTF-8 (Latin-1 or Windows-1252?)"
        super().__init__(f"{path} is not UTF-8 text: {what}; save it as UTF-8 (a UTF-8 BOM is accepted)")
        self.path = Path(path)


class ConvertError(MetaSPOError):
    """A downloaded file does not have its expected format; the message says where and what."""


class TooManyFailures(RuntimeError):
    """The models failed too often to go on: more task-model calls failed in one evaluation grid
    than ``max_failure_share`` allows, or the optimizer model's calls failed for every proposal of
    a phase (or for more than ``max_failure_share`` of them, when the phase has at least 4).

    Raised after the grid or the phase's proposals, so their completed work is journaled; failed
    evaluations and proposals are asked again when the run resumes (once the model works)."""


class WorkerDied(TooManyFailures):
    """A worker process of a ``num_processes`` > 1 run died (killed by a signal, or crashed) while
    it ran a grid's items. Raised once the parent has collected -- and journaled -- every item the
    workers had sent back; the other workers are stopped, and the items the workers had in hand are
    asked again when the run resumes.

    Attributes: ``pid`` and ``exitcode`` (negative: the signal that killed it; None: unknown)."""

    def __init__(self, message: str, pid: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.pid, self.exitcode = pid, exitcode


class NothingParsed(TooManyFailures):
    """No answer of any task could be parsed in a run's initial evaluation: the task model does not
    write answers in the form the tasks' metrics read (usually a prompt format it cannot follow), so
    every score of the search would be 0 and mean nothing. Raised after the initial evaluation is
    journaled and checkpointed, before any optimizer call; ``allow_unparsed=True`` searches anyway.

    Attributes: ``shares`` (``{task: (parsed, answers)}``), ``model`` and ``prompt_format``."""

    def __init__(self, shares: Mapping[str, tuple[int, int]], model: str, prompt_format: str):
        self.shares, self.model, self.prompt_format = dict(shares), model, prompt_format
        super().__init__(
            self.describe(
                "use a format the model can follow (a DSPy adapter: adapter='json' or 'chat'), a stronger model, "
                "or allow_unparsed=True to search anyway"
            )
        )

    def describe(self, fix: str) -> str:
        """The stop in one sentence, ending with ``fix`` (what to do; the CLI names its flags)."""
        parsed = ", ".join(f"{task} {n}/{of}" for task, (n, of) in self.shares.items())
        return (
            f"no answer of any task could be parsed in the initial evaluation (task model {self.model!r}, prompt "
            f"format {self.prompt_format!r}; answers parsed: {parsed}): the model does not write its answers in the "
            f"form the tasks' parsers read, so every score would be 0; {fix}"
        )
