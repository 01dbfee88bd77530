"""Optimizer-LM proposals: failure-driven rewrites (MetaSPO, ProTeGi) and APE-style proposals.

The search loops never format prompts or parse LM text themselves: they hand this module the
wrong examples (or input/output pairs) and get back :class:`Proposal` records, each either ``ok``
with a candidate text or ``discarded`` with the reason (LM error, unparsable, empty, a template
placeholder, an echo, too long, duplicate). An *echo* is an answer that only repeats the request's
own wording -- a field's name or title such as "Improved System Prompt", a field description, the
instructions (:func:`~metaspo_dspy.optimize.proposer.echoes.echo_of`) -- and its reason starts with ``echo``
and quotes the answer; like the other content discards it is never ``failed``. A discarded
proposal is never evaluated as a prompt. A proposal whose optimizer call itself failed (an
exception after the LM's retries, including an empty or truncated answer) is marked ``failed``:
the searches stop when a phase's proposals fail (see
:meth:`~metaspo_dspy.optimize.engine.search.SearchBase.run_proposals`), and a resumed run asks a failed
proposal again. Reasons are redacted (:func:`~metaspo_dspy.redact.redact`).

Journal: a finished proposal is journaled when it completes, and the analysis of a two-call
proposal as soon as it is answered, so a run killed between the two calls does not ask for the
analysis again on resume (even without DSPy's cache).

Each candidate is its own sample: its calls carry a distinct ``rollout_id`` (so DSPy's cache does
not collapse identical requests into one answer) and, where the provider supports it, a ``seed``;
both derive from (run seed, iteration, phase, task, candidate, call).
"""

from __future__ import annotations

import contextvars
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

from metaspo_dspy.budget import merge_usage
from metaspo_dspy.evaluation.records import token_counts
from metaspo_dspy.optimize.proposer import signatures as sigs
from metaspo_dspy.optimize.proposer.echoes import echo_of
from metaspo_dspy.optimize.proposer.shown import WrongExample
from metaspo_dspy.program.adapters import observed
from metaspo_dspy.program.scope import no_system_prompt
from metaspo_dspy.program.system_prompt import MAX_PROMPT_CHARS
from metaspo_dspy.redact import redact
from metaspo_dspy.seeding import derive_seed
from metaspo_dspy.store.hashing import json_digest
from metaspo_dspy.store.journal import Journal
from metaspo_dspy.store.ledger import Ledger

__all__ = ["Proposal", "Proposer", "slots_of"]

#: The journaled fields of a finished proposal.
_RECORD = ("analysis", "text", "status", "reason", "optimizer_calls")
#: ``step(ask)``: the answer to a proposal's analysis call, from the journal or by calling ``ask``.
Step = Callable[[Callable[[], "str | None"]], "str | None"]
_SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


@dataclass
class Proposal:
    """One proposal: what the optimizer was shown, what it said, and what became of it."""

    id: int
    kind: str  # "user" | "system" | "ape_user" | "ape_system" | "ape_paraphrase"
    iteration: int | None
    candidate: int
    task: str | None
    parent_node: int | None
    predictor: str | None
    shown: list[dict[str, Any]] = field(default_factory=list)
    analysis: str | None = None
    text: str | None = None
    status: str = "pending"  # "ok" | "discarded"
    reason: str | None = None
    optimizer_calls: int = 0
    node_ids: list[int] = field(default_factory=list)
    failed: bool = False  # discarded because an optimizer call failed, not for its content

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def discard(self, reason: str) -> None:
        self.status, self.reason = "discarded", reason

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def slots_of(text: str, names: Sequence[str]) -> list[str]:
    """The ``{name}`` input slots present in a prompt."""
    return [f"{{{m}}}" for m in dict.fromkeys(_SLOT.findall(text)) if m in names]


class Proposer:
    """Makes proposals with the optimizer LM.

    Args:
        optimizer_lm: the LM that writes prompts.
        adapter: adapter for optimizer calls (None: the configured one, else ChatAdapter). The system
            prompt under optimization is never applied to these calls.
        seed: the run seed; rollout ids and provider seeds derive from it.
        max_prompt_chars: longer proposals are discarded.
        num_threads: proposals of one phase made concurrently.
        journal: where finished proposals are kept (and read back); None: in memory.
        ledger: where each optimizer call and its tokens are recorded when it returns or fails
            (:mod:`metaspo_dspy.store.ledger`); None: in memory.
    """

    def __init__(
        self,
        optimizer_lm: Any,
        adapter: Any = None,
        seed: int = 42,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        num_threads: int = 8,
        journal: Journal | None = None,
        ledger: Ledger | None = None,
    ):
        self.lm = optimizer_lm
        self.adapter = adapter
        self.seed = seed
        self.max_prompt_chars = max_prompt_chars
        self.num_threads = max(1, num_threads)
        self.journal = journal if journal is not None else Journal(None)
        self.ledger = ledger if ledger is not None else Ledger(None)
        self.calls = 0
        self.reused = 0
        self._usage: dict[str, dict[str, int]] = {}
        self._usage_lock = threading.Lock()

    def usage_snapshot(self) -> dict[str, dict[str, int]]:
        with self._usage_lock:
            return {model: dict(counts) for model, counts in self._usage.items()}

    def usage_since(self, snapshot: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        """Tokens used by optimizer calls since ``snapshot`` (per model)."""
        now = self.usage_snapshot()
        return {
            model: {k: v - snapshot.get(model, {}).get(k, 0) for k, v in counts.items()}
            for model, counts in now.items()
            if counts != snapshot.get(model)
        }

    # -- one optimizer call ------------------------------------------------------------------
    def _config(self, *parts: Any) -> dict[str, Any]:
        kwargs = getattr(self.lm, "kwargs", {}) or {}
        config: dict[str, Any] = {}
        if (kwargs.get("temperature") or 0) > 0:
            config["rollout_id"] = derive_seed(self.seed, *parts) % 2**31
            try:
                if "seed" in self.lm.supported_params:
                    config["seed"] = config["rollout_id"]
            except Exception:
                pass
        return config

    def _call(self, signature, proposal: Proposal, step: str, **inputs) -> str:
        config = self._config(proposal.kind, proposal.iteration, proposal.task, proposal.candidate, step)
        proposal.optimizer_calls += 1
        self.calls += 1
        # A nested dspy.track_usage() rolls these tokens up into any tracker around compile(); the
        # block carries no system prompt even if compile() itself runs inside a program's scope.
        with (
            dspy.track_usage() as tracker,
            no_system_prompt(observed(self.adapter or dspy.settings.adapter), lm=self.lm, trace=[]),
        ):
            try:
                result = dspy.Predict(signature)(**inputs, config=config)
            finally:
                usage = token_counts(tracker)
                self.ledger.paid("optimizer", 1, usage)
                with self._usage_lock:
                    merge_usage(self._usage, usage)
        return getattr(result, next(iter(signature.output_fields)))

    def _guarded(self, proposal: Proposal, fn: Callable[[Step], str | None], shown: Any) -> Proposal:
        """Run ``fn`` (the optimizer calls) unless the journal already holds this proposal finished
        (a failed one is asked again). ``fn`` gets a :data:`Step` for its analysis call."""
        key = f"{proposal.kind}|{proposal.iteration}|{proposal.task}|{proposal.candidate}|" + json_digest(
            [self.seed, proposal.predictor, shown], length=24, default=str
        )
        stored = self.journal.get(key)
        if stored is not None and "status" in stored and not stored.get("failed"):
            for name in _RECORD:
                setattr(proposal, name, stored[name])
            if proposal.ok:  # journaled by an older version: its text passes today's checks too
                self._validate(proposal, proposal.text)
            self.reused += 1
            return proposal

        def analysis(ask: Callable[[], str | None]) -> str | None:
            part = self.journal.get(f"{key}|analysis")
            if part is not None and "analysis" in part:
                proposal.optimizer_calls += 1  # paid for by an earlier process
                return part["analysis"]
            text = ask()
            self.journal.put(f"{key}|analysis", {"analysis": text})
            return text

        try:
            text = fn(analysis)
        except AdapterParseError as exc:
            proposal.discard(redact(f"unparsable optimizer output: {exc}")[:300])
        except Exception as exc:
            proposal.discard(redact(f"optimizer call failed: {type(exc).__name__}: {exc}")[:400])
            proposal.failed = True
        else:
            if proposal.status == "pending":
                self._validate(proposal, text)
        self.journal.put(key, {name: getattr(proposal, name) for name in (*_RECORD, "failed")})
        return proposal

    def _validate(self, proposal: Proposal, text: str | None) -> None:
        text = (text or "").strip()
        if not text:
            proposal.discard("empty proposal")
        elif _PLACEHOLDER.fullmatch(text):
            proposal.discard(f"echo: the optimizer repeated a template placeholder ({text[:60]})")
        elif (echoed := echo_of(text)) is not None:
            proposal.discard(f"echo: the optimizer repeated {echoed}: {redact(text[:80])!r}")
        elif len(text) > self.max_prompt_chars:
            proposal.discard(f"proposal too long ({len(text)} > {self.max_prompt_chars} characters)")
        else:
            proposal.text, proposal.status = text, "ok"

    def run_all(self, jobs: Sequence[Callable[[], Proposal]]) -> list[Proposal]:
        """Run proposal jobs concurrently; results in job order."""
        if len(jobs) <= 1 or self.num_threads == 1:
            return [job() for job in jobs]
        with ThreadPoolExecutor(max_workers=min(self.num_threads, len(jobs))) as pool:
            futures = [pool.submit(contextvars.copy_context().run, job) for job in jobs]
            return [f.result() for f in futures]

    def _two_calls(
        self,
        proposal: Proposal,
        diagnose: Any,
        inputs: dict[str, str],
        rewrite: Any,
        rewrite_inputs: dict[str, str],
        analysis_field: str,
        shown: Any,
    ) -> Proposal:
        """Analysis (``diagnose``), then rewrite with the analysis as ``analysis_field``; an empty
        analysis discards the proposal without the second call."""

        def go(analysis: Step) -> str:
            proposal.analysis = analysis(lambda: self._call(diagnose, proposal, "analysis", **inputs))
            if not (proposal.analysis or "").strip():
                proposal.discard("empty analysis")
                return ""
            fields = {**rewrite_inputs, analysis_field: proposal.analysis}
            return self._call(rewrite, proposal, "rewrite", **fields)

        return self._guarded(proposal, go, shown)

    # -- proposal kinds ---------------------------------------------------------------------
    def user_prompt(
        self,
        proposal: Proposal,
        system_prompt: str,
        user_prompt: str,
        shown: Sequence[WrongExample],
        input_names: Sequence[str],
    ) -> Proposal:
        """Failure-driven user-prompt rewrite: analysis, then rewrite (two calls)."""
        proposal.shown = [asdict(w) for w in shown]
        examples = "\n\n".join(w.render() for w in shown) or "(no wrong examples)"
        rewrite = _with_slot_note(sigs.RewriteUserPrompt, slots_of(user_prompt, input_names))

        inputs = {"system_prompt": system_prompt, "user_prompt": user_prompt, "wrong_examples": examples}
        return self._two_calls(
            proposal, sigs.DiagnoseUserPrompt, inputs, rewrite, inputs, "user_prompt_analysis", list(inputs.values())
        )

    def system_prompt(
        self, proposal: Proposal, system_prompt: str, blocks: Sequence[str], shown: Sequence[WrongExample]
    ) -> Proposal:
        """Failure-driven system-prompt rewrite from pooled wrong examples (two calls)."""
        proposal.shown = [asdict(w) for w in shown]
        examples = "\n\n".join(b for b in blocks if b) or "(no wrong examples)"

        return self._two_calls(
            proposal,
            sigs.DiagnoseSystemPrompt,
            {"system_prompt": system_prompt, "wrong_examples": examples},
            sigs.RewriteSystemPrompt,
            {"system_prompt": system_prompt},
            "system_prompt_analysis",
            [system_prompt, examples],
        )

    def induce(self, proposal: Proposal, pairs: Sequence[str], suffix: str = "") -> Proposal:
        """APE generation: infer an instruction from input/output pairs (one call); ``suffix`` appended."""
        proposal.shown = [{"pair": p} for p in pairs]
        text = "\n".join(pairs)
        return self._guarded(
            proposal,
            lambda _: _append(self._call(sigs.InduceInstruction, proposal, "induce", input_output_pairs=text), suffix),
            [text, suffix],
        )

    def paraphrase(self, proposal: Proposal, instruction: str, input_names: Sequence[str]) -> Proposal:
        """APE resampling: same meaning, different words (one call)."""
        signature = _with_slot_note(sigs.ParaphraseInstruction, slots_of(instruction, input_names))
        return self._guarded(
            proposal, lambda _: self._call(signature, proposal, "paraphrase", instruction=instruction), [instruction]
        )


def _with_slot_note(signature, slots: list[str]):
    if not slots:
        return signature
    return signature.with_instructions(signature.instructions + sigs.SLOT_NOTE.format(slots=", ".join(slots)))


def _append(text: str | None, suffix: str) -> str | None:
    if text is None or not text.strip() or not suffix:
        return text
    return text.rstrip() + suffix
