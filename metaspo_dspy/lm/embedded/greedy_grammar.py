"""Greedy decoding under a grammar at the cost of plain greedy decoding, with the same tokens.

llama-cpp-python samples every token through one llama.cpp sampler chain; at temperature 0 with a
JSON grammar that chain is *penalties -> grammar -> greedy*, so the grammar is asked about all
49,152 vocabulary entries of the embedded model for every generated token (measured 21-32 ms per
token with the grammar, 11 without; ``benchmarks/embedded_profile.py``). llama.cpp's own
``common_sampler_sample`` avoids that: it takes the penalised argmax first, asks the grammar about
that one token, and only when the grammar rejects it runs the grammar over the whole vocabulary and
picks again. :class:`GreedyGrammarSampler` does the same with llama.cpp's own samplers (the
penalties and greedy samplers in a chain, the grammar sampler apart), through llama-cpp-python's
public low-level API, with one step between: when the greedy pick is rejected, the grammar is asked
about the entries above the 64th, then the 1,024th highest penalised logit (:data:`TOPS`) before the
whole vocabulary.

Why the token is always the one the full chain picks:

* the penalties and the grammar act on each vocabulary entry independently; the grammar only sets
  logits to ``-inf`` and a penalty leaves ``-inf`` at ``-inf``, so their order does not matter;
* greedy picks the first entry with the largest logit (entries in token-id order). If the
  unconstrained pick is allowed by the grammar, no allowed entry has a larger logit and none with an
  equal logit comes before it (it would have been picked), so it is also the constrained pick. The
  same holds inside a subset of the entries strictly above a threshold, kept in token-id order:
  every entry outside has a smaller logit. Otherwise the full pass runs, which is the chain itself;
* each chosen token is accepted exactly once into the penalty history and the grammar state, as the
  chain's ``llama_sampler_sample`` does.

:class:`GrammarLlama` is a ``llama_cpp.Llama`` whose public :meth:`~GrammarLlama.sample` hands the
choice to a :class:`GreedyGrammarSampler` while one is set (for one ``create_completion`` call), so
stop strings, stopping criteria, EOS, ``max_tokens`` and detokenisation stay llama-cpp-python's.
This module imports ``llama_cpp``; import it only where the embedded extra is known to be there.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp
import numpy as np

from metaspo_dspy.lm.embedded.json_grammar import grammar_sampler

#: llama.cpp's ``llama_token_data`` (id, logit, p) as a numpy record.
_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)
#: How many of the highest penalised logits are asked about, in turn, before the whole vocabulary.
TOPS = (64, 1024)


class GreedyGrammarSampler:
    """Temperature-0 sampling constrained by ``grammar``, for one generation.

    ``grammar`` is a ``llama_cpp.LlamaGrammar``; the penalty settings are those llama-cpp-python's
    chain would use (``repeat_penalty`` over the last ``last_n`` tokens, frequency and presence
    penalties). Counts the tokens the grammar allowed at once (:attr:`fast`), those found among the
    highest logits (:data:`TOPS`: :attr:`top`) and those that needed the pass over the whole
    vocabulary (:attr:`full`). Call :meth:`close` when the generation is over.
    """

    def __init__(
        self,
        llama: Any,
        grammar: Any,
        *,
        repeat_penalty: float,
        frequency_penalty: float,
        presence_penalty: float,
        last_n: int,
    ):
        self.n_vocab = int(llama.n_vocab())
        self.fast = 0
        self.top = 0
        self.full = 0
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(
            self._chain,
            llama_cpp.llama_sampler_init_penalties(
                self.n_vocab, last_n, repeat_penalty, frequency_penalty, presence_penalty
            ),
        )
        llama_cpp.llama_sampler_chain_add(self._chain, llama_cpp.llama_sampler_init_greedy())
        self._grammar = grammar_sampler(llama, grammar)
        if not self._grammar:
            llama_cpp.llama_sampler_free(self._chain)
            raise ValueError("llama.cpp rejected the grammar")
        self._ids = np.arange(self.n_vocab, dtype=np.intc)
        self._data = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        self._all = llama_cpp.llama_token_data_array(
            data=self._data.ctypes.data_as(llama_cpp.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False
        )
        self._one_data = llama_cpp.llama_token_data()
        self._one = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self._one_data), size=1, selected=-1, sorted=False
        )

    def _load(self, logits: np.ndarray) -> ctypes.Structure:
        """The whole vocabulary with fresh logits, as ``llama_sampler_sample`` builds it."""
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["p"] = 0.0
        self._all.size, self._all.selected, self._all.sorted = self.n_vocab, -1, False
        return self._all

    def _allowed(self, token: int) -> bool:
        self._one_data.id, self._one_data.logit, self._one_data.p = token, 1.0, 0.0
        self._one.size, self._one.selected, self._one.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._one))
        return not math.isinf(self._one_data.logit)

    def _best_allowed_in_top(self, size: int) -> int | None:
        """The grammar's greedy pick among the ``size`` highest penalised logits, or None.

        Runs right after the chain was applied, so ``self._data`` holds the penalised logits. Takes
        the entries whose logit is strictly above the ``size``-th largest: every other entry has a
        smaller logit, so an allowed entry of the set with the largest logit (the first in token-id
        order among equals, as greedy picks) is the pick over the whole vocabulary.
        """
        penalised = self._data["logit"]
        size = min(size, self.n_vocab)
        threshold = np.partition(penalised, -size)[-size]
        top = self._data[np.flatnonzero(penalised > threshold)]  # a copy, in token-id order
        if not len(top):
            return None
        subset = llama_cpp.llama_token_data_array(
            data=top.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(top), selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(subset))
        best = int(np.argmax(top["logit"]))  # the first of equal maxima, as the greedy sampler
        return None if math.isinf(top["logit"][best]) else int(top["id"][best])

    def sample(self, ctx: Any, idx: int = -1) -> int:
        """Choose the next token from the logits of output ``idx`` of ``ctx`` and accept it."""
        pointer = llama_cpp.llama_get_logits_ith(ctx, idx)
        token = self.choose(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)))
        self.accept(token)
        return token

    def choose(self, logits: np.ndarray) -> int:
        """The token the chain *penalties -> grammar -> greedy* picks from ``logits`` (one float32
        per vocabulary entry) in the current state; changes no state."""
        candidates = self._load(logits)
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(candidates))
        token = int(self._data["id"][candidates.selected])
        if self._allowed(token):
            self.fast += 1
            return token
        found = next((t for t in map(self._best_allowed_in_top, TOPS) if t is not None), None)
        if found is not None:
            self.top += 1
            return found
        self.full += 1
        candidates = self._load(logits)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(candidates))
        return int(self._data["id"][candidates.selected])

    def accept(self, token: int) -> None:
        """Record ``token`` as generated: in the grammar's state and the penalties' history."""
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)

    def close(self) -> None:
        """Free the llama.cpp samplers (idempotent)."""
        for name in ("_grammar", "_chain"):
            sampler = getattr(self, name, None)
            if sampler:
                llama_cpp.llama_sampler_free(sampler)
            setattr(self, name, None)


class GrammarLlama(llama_cpp.Llama):
    """``llama_cpp.Llama`` that samples with :attr:`greedy_grammar` while it is set."""

    greedy_grammar: GreedyGrammarSampler | None = None

    def sample(self, *args: Any, idx: int | None = None, **kwargs: Any) -> int:
        """As ``Llama.sample``; with :attr:`greedy_grammar` set, that sampler chooses the token."""
        if self.greedy_grammar is None:
            return super().sample(*args, idx=idx, **kwargs)
        assert self.n_tokens > 0
        return self.greedy_grammar.sample(self.ctx, -1 if idx is None else idx - self.n_tokens)
