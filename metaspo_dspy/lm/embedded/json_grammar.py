"""JSON schemas as llama.cpp grammars for the embedded model.

:func:`response_schema` reads the schema out of an OpenAI-style ``response_format``;
:func:`grammar_for` turns it into a validated ``llama_cpp.LlamaGrammar`` with every free string
capped in length (:func:`cap_strings`), degrading to the uncapped schema and then to any JSON when
llama.cpp cannot compile it, never to a crash. Grammars are cached per schema text.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from metaspo_dspy.lm.embedded.model import MAX_STRING_CHARS, STRING_CHARS_PER_TOKEN


def response_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema to enforce: ``{}`` for plain JSON mode, None for free text."""
    if response_format is None:
        return None
    if isinstance(response_format, type) and hasattr(response_format, "model_json_schema"):
        return response_format.model_json_schema()
    if hasattr(response_format, "model_dump"):
        response_format = response_format.model_dump()
    if not isinstance(response_format, dict):
        raise ValueError(f"unsupported response_format {response_format!r}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return response_format.get("schema") or {}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        return spec.get("schema") or response_format.get("schema") or {}
    raise ValueError(f"unsupported response_format type {kind!r}")


def cap_strings(schema: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """Give unbounded string properties a ``maxLength`` so every field fits in ``max_tokens``."""
    if not schema:
        return schema
    schema = copy.deepcopy(schema)
    strings: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "string" and "enum" not in node and "const" not in node:
                strings.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    if strings:
        budget = (max_tokens * STRING_CHARS_PER_TOKEN) // len(strings)
        budget = max(16, min(MAX_STRING_CHARS, budget))
        for node in strings:
            node["maxLength"] = min(int(node.get("maxLength", budget)), budget)
    return schema


def grammar_sampler(llama: Any, grammar: Any) -> Any:
    """A new llama.cpp grammar sampler for ``grammar`` (a ``LlamaGrammar``) over ``llama``'s
    vocabulary, as llama-cpp-python builds it; a NULL pointer (falsy) when llama.cpp rejects the
    grammar. The caller frees it with ``llama_cpp.llama_sampler_free``."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    return llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))


def _grammar_valid(llama: Any, grammar: Any) -> bool:
    """Whether llama.cpp accepts ``grammar``: an invalid one would crash the sampler (NULL)."""
    import llama_cpp

    sampler = grammar_sampler(llama, grammar)
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


_GRAMMARS: dict[str, Any] = {}


def _compile(llama: Any, schema_json: str):
    """A validated grammar for a schema (JSON text), or None when llama.cpp rejects it."""
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if schema_json not in _GRAMMARS:
        try:
            if schema_json == "{}":
                grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
            else:
                grammar = LlamaGrammar.from_json_schema(schema_json, verbose=False)
            _GRAMMARS[schema_json] = grammar if _grammar_valid(llama, grammar) else None
        except Exception:  # the schema converter rejects some constructs
            _GRAMMARS[schema_json] = None
    return _GRAMMARS[schema_json]


def grammar_for(llama: Any, schema: dict[str, Any], max_tokens: int):
    """The grammar for ``schema`` with capped strings; falls back to the uncapped schema, then to
    any-JSON, so a schema llama.cpp cannot compile degrades instead of crashing."""
    for candidate in (cap_strings(schema, max_tokens), schema, {}):
        # Keep property order (sort_keys would reorder fields, e.g. put answer before reasoning).
        grammar = _compile(llama, json.dumps(candidate))
        if grammar is not None:
            return grammar
    return None  # pragma: no cover - the any-JSON grammar always compiles
