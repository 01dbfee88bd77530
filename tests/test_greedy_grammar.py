"""Greedy decoding under a grammar (``metaspo_dspy.lm.embedded.greedy_grammar``) picks exactly the tokens
llama-cpp-python's own sampler chain (penalties -> grammar -> greedy) picks.

Two levels: the sampler against a real llama.cpp chain on crafted logits full of ties (every branch:
greedy pick allowed, found among the top logits, whole vocabulary), and the embedded engine with the
fast path on and off on real prompts (same text, finish reason and token counts).
"""

from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest
from conftest import needs_embedded

pytestmark = needs_embedded

SCHEMA = {
    "type": "object",
    "properties": {"reasoning": {"type": "string"}, "answer": {"type": "integer"}},
    "required": ["reasoning", "answer"],
}
CHOICE = {
    "type": "object",
    "properties": {"size": {"type": "string", "enum": ["small", "large"]}, "answer": {"type": "number"}},
    "required": ["size", "answer"],
}


def json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


@pytest.fixture(scope="module")
def vocab_llama():
    import llama_cpp

    from metaspo_dspy.lm.embedded.model import check_available

    llama = llama_cpp.Llama(model_path=str(check_available()), vocab_only=True, verbose=False)
    yield llama
    llama.close()


class StockChain:
    """llama-cpp-python's chain at temperature 0, built as ``Llama._init_sampler`` builds it."""

    def __init__(self, llama, grammar, repeat: float, freq: float, present: float):
        import llama_cpp

        self.lib, self.n_vocab = llama_cpp, llama.n_vocab()
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        add(self.chain, llama_cpp.llama_sampler_init_penalties(self.n_vocab, 64, repeat, freq, present))
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        add(self.chain, llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode(), grammar._root.encode()))
        add(self.chain, llama_cpp.llama_sampler_init_greedy())

    def choose(self, logits: np.ndarray) -> int:
        data = (self.lib.llama_token_data * self.n_vocab)()
        view = np.frombuffer(data, dtype=[("id", np.intc), ("logit", np.single), ("p", np.single)])
        view["id"], view["logit"], view["p"] = np.arange(self.n_vocab), logits, 0.0
        array = self.lib.llama_token_data_array(data=data, size=self.n_vocab, selected=-1, sorted=False)
        self.lib.llama_sampler_apply(self.chain, ctypes.byref(array))
        return int(view["id"][array.selected])

    def accept(self, token: int) -> None:
        self.lib.llama_sampler_accept(self.chain, token)

    def close(self) -> None:
        self.lib.llama_sampler_free(self.chain)


def tied_logits(rng: np.random.Generator, n_vocab: int, favoured: np.ndarray, step: int) -> np.ndarray:
    """Logits full of ties. Mostly: every entry in {-2..2}, a few hundred in {3..9}, the first ids
    (JSON punctuation and digits among them) often among them. Every third step: all equal but a
    handful of random entries (an empty or small set above the rest, often all rejected); every
    fifth: all equal."""
    if step % 5 == 4:
        return np.full(n_vocab, 1.5, dtype=np.single)
    if step % 3 == 2:
        logits = np.full(n_vocab, 2.0, dtype=np.single)
        logits[rng.choice(n_vocab, 12, replace=False)] = 5.0
        return logits
    logits = rng.integers(-2, 3, n_vocab).astype(np.single)
    lifted = rng.choice(n_vocab, 300, replace=False)
    logits[lifted] = rng.integers(3, 10, lifted.size)
    logits[favoured] = rng.integers(3, 10, favoured.size)
    return logits


@pytest.mark.parametrize(
    ("schema", "penalties"),
    [({}, (1.1, 0.0, 0.0)), (SCHEMA, (1.1, 0.0, 0.0)), (CHOICE, (1.3, 0.2, 0.5))],
    ids=["any-json", "schema", "enum-with-penalties"],
)
def test_sampler_picks_what_the_stock_chain_picks(vocab_llama, schema, penalties):
    import llama_cpp

    from metaspo_dspy.lm.embedded.greedy_grammar import GreedyGrammarSampler
    from metaspo_dspy.lm.embedded.json_grammar import grammar_for

    grammar = grammar_for(vocab_llama, schema, max_tokens=64)
    repeat, freq, present = penalties
    rng = np.random.default_rng(7)
    n_vocab = vocab_llama.n_vocab()
    vocab = llama_cpp.llama_model_get_vocab(vocab_llama.model)
    favoured = np.arange(0, 400)
    totals = np.zeros(3, dtype=int)
    for _ in range(6):  # several generations, each from a fresh state
        fast = GreedyGrammarSampler(
            vocab_llama, grammar, repeat_penalty=repeat, frequency_penalty=freq, presence_penalty=present, last_n=64
        )
        stock = StockChain(vocab_llama, grammar, repeat, freq, present)
        try:
            for step in range(120):
                logits = tied_logits(rng, n_vocab, favoured, step)
                token = fast.choose(logits)
                assert token == stock.choose(logits)
                fast.accept(token)
                stock.accept(token)
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
        finally:
            totals += [fast.fast, fast.top, fast.full]
            fast.close()
            stock.close()
    assert (totals > 0).all(), f"not every branch ran: {totals.tolist()}"  # fast, top, full


CASES = [
    *(
        ({"messages": [{"role": "user", "content": f"What is {i} plus {3 * i + 1}? Reply in JSON."}]}, SCHEMA)
        for i in range(3)
    ),
    ({"messages": [{"role": "user", "content": "Is 12 small or large? Answer in JSON."}]}, CHOICE),
    ({"messages": [{"role": "user", "content": "Write a long story about a dragon, as JSON."}]}, SCHEMA),
    ({"messages": [{"role": "user", "content": "List three colours as a JSON object."}]}, {}),
]


def run_cases(engine, **params) -> list:
    outputs = []
    for case, schema in CASES:
        response_format = {"type": "json_object"} if schema == {} else json_schema(schema)
        out = engine.complete(case["messages"], {"max_tokens": 96, "response_format": response_format, **params})
        outputs.append(out)
    return outputs


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0},
        {"temperature": 0, "n": 2, "presence_penalty": 0.4, "frequency_penalty": 0.2},
        {"temperature": 0, "stop": ["answer"]},
        {"temperature": 0.8, "seed": 3},  # sampled: the stock chain in both
    ],
    ids=["greedy", "n2-penalties", "stop", "sampled"],
)
def test_engine_answers_equal_with_and_without_the_fast_path(params, tmp_path, monkeypatch):
    from metaspo_dspy.lm.embedded.engine import EmbeddedEngine

    stock = EmbeddedEngine(greedy_grammar=False)
    try:
        expected = run_cases(stock, **params)
    finally:
        stock.close()
    profile = tmp_path / "calls.jsonl"
    monkeypatch.setenv("METASPO_EMBEDDED_PROFILE", str(profile))
    fast = EmbeddedEngine()
    try:
        assert fast.greedy_grammar
        assert run_cases(fast, **params) == expected
    finally:
        fast.close()
    checks = [json.loads(line)["grammar_checks"] for line in profile.read_text().splitlines()]
    if params["temperature"] == 0:
        assert all(c is not None and sum(c) > 0 for c in checks)
    else:
        assert checks == [None] * len(checks)


def test_switched_off_by_the_environment(monkeypatch):
    from metaspo_dspy.lm.embedded.engine import EmbeddedEngine

    monkeypatch.setenv("METASPO_EMBEDDED_GREEDY_GRAMMAR", "0")
    assert not EmbeddedEngine().greedy_grammar
    assert EmbeddedEngine(greedy_grammar=True).greedy_grammar
