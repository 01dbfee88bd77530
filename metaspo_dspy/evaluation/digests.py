"""What identifies an evaluation: digests of everything that shapes a job's requests.

Two (job, example) items with equal :func:`item_key` send identical requests, so the grid evaluator
runs them once and a journal can replay them (:mod:`metaspo_dspy.evaluation.grid`). Identities hold no
secrets or endpoints: an LM is its model and generation settings (:func:`lm_identity`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import dspy

from metaspo_dspy.evaluation.records import EvalJob, jsonable
from metaspo_dspy.program.adapters import adapter_name
from metaspo_dspy.store.hashing import json_digest, sha256_hex

_SECRET_OR_ENDPOINT = re.compile(r"key|token|secret|password|auth|header|api_base|base_url", re.IGNORECASE)
#: Client settings that never shape an answer: a new default timeout must not change a run's
#: fingerprint (or make a recorded run refuse to resume).
_CLIENT_ONLY = {"timeout", "max_retry_after"}


def lm_identity(lm: Any) -> dict[str, Any]:
    """An LM's model and generation settings, without secrets, endpoints or client-only settings
    (``timeout``): safe to store, and equal for two clients that get the same answers."""
    if lm is None:
        return {}
    kwargs = {
        k: v
        for k, v in getattr(lm, "kwargs", {}).items()
        if not _SECRET_OR_ENDPOINT.search(k) and k not in _CLIENT_ONLY
    }
    return {"model": getattr(lm, "model", type(lm).__name__), "kwargs": jsonable(kwargs)}


def program_state(program: dspy.Module) -> list[Any]:
    """Everything in a program that shapes its requests: each predictor's signature, demos, LM."""
    state = []
    for name, predictor in program.named_predictors():
        signature = predictor.signature
        state.append(
            {
                "name": name,
                "instructions": signature.instructions,
                "fields": [
                    [n, str(f.annotation), f.json_schema_extra.get("prefix"), f.json_schema_extra.get("desc")]
                    for n, f in signature.fields.items()
                ],
                "demos": jsonable(list(predictor.demos)),
                "lm": lm_identity(predictor.lm),
                "config": jsonable(predictor.config),
            }
        )
    return state


def job_digest(task_lm: Any, adapter: Any, job: EvalJob, program_fingerprint: list[Any] | None = None) -> str:
    """A digest of everything in a job that shapes its requests: task LM, adapter, system prompt and
    placement, every predictor's instructions, fields, demos, LM and config."""
    payload = {
        "task_lm": lm_identity(task_lm),
        "adapter": adapter_name(adapter),
        "system_prompt": job.system_prompt,
        "instructions_in": job.instructions_in,
        "program": program_fingerprint if program_fingerprint is not None else program_state(job.program),
        "program_type": type(job.program).__qualname__,
    }
    return json_digest(payload)


def item_key(digest: str, example: dspy.Example) -> str:
    """The key of one (job, example) evaluation: equal keys, identical requests."""
    text = digest + json.dumps(jsonable(example), sort_keys=True, ensure_ascii=False, default=repr)
    return sha256_hex(text)
