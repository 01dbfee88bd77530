"""Record and rebuild the structure of simple task programs (Predict / ChainOfThought).

``Module.save`` stores a program's state, not its structure. To let ``MetaSPOProgram.from_file``
rebuild task programs without the user's code, the structure of the common shapes is written as a
typed signature string (``"question: str -> answer: Literal['A', 'B']"``) plus the module kind.
Anything else gets ``None`` and must be given back to ``from_file(programs=...)``.
"""

from __future__ import annotations

import typing
from typing import Any

import dspy

_KINDS = ("Predict", "ChainOfThought")


def _type_string(annotation: Any) -> str | None:
    if annotation in (str, int, float, bool):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return repr(annotation).replace("typing.", "")
    if origin in (list, dict, tuple):
        args = [_type_string(arg) for arg in typing.get_args(annotation)]
        if any(arg is None for arg in args):
            return None
        return f"{origin.__name__}[{', '.join(args)}]"
    return None


def _signature_string(signature: type[dspy.Signature]) -> str | None:
    parts = []
    for fields in (signature.input_fields, signature.output_fields):
        items = []
        for name, info in fields.items():
            type_string = _type_string(info.annotation)
            if type_string is None:
                return None
            items.append(f"{name}: {type_string}")
        parts.append(", ".join(items))
    text = " -> ".join(parts)
    try:
        rebuilt = dspy.Signature(text)
    except Exception:
        return None
    same = all(rebuilt.fields[name].annotation == info.annotation for name, info in signature.fields.items()) and list(
        rebuilt.fields
    ) == list(signature.fields)
    return text if same else None


def program_spec(program: dspy.Module) -> dict[str, Any] | None:
    """``{"kind", "signature"}`` for a bare Predict or ChainOfThought, else None."""
    kind = type(program).__name__
    if type(program) is dspy.Predict:
        signature = program.signature
    elif type(program) is dspy.ChainOfThought:
        signature = program.predict.signature
        if "reasoning" in signature.output_fields:
            signature = signature.delete("reasoning")
    else:
        return None
    text = _signature_string(signature)
    return None if text is None else {"kind": kind, "signature": text}


def program_from_spec(spec: dict[str, Any]) -> dspy.Module:
    """A fresh module of the recorded kind and signature (state is loaded separately)."""
    kind = spec.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"cannot rebuild a program of kind {kind!r}; known kinds: {_KINDS}")
    signature = dspy.Signature(spec["signature"])
    return dspy.Predict(signature) if kind == "Predict" else dspy.ChainOfThought(signature)
