"""Every ```python block of README.md runs (issue 12, item 9).

Blocks run in README order in one namespace, as a reader would type them, in a temporary working
directory. The fixture defines only what the README says the reader brings: the model objects
(``task_lm``, ``optimizer_lm`` -- served by the deterministic fake provider; the README's own lines
that build them for OpenAI are left out) and their data and programs (``beauty_train``,
``game_train``, ``beauty_test``, ``my_rag_program``). Everything else a block uses it defines
itself or takes from an earlier block. Blocks that cannot run here are listed in ``SKIPPED`` with
the reason, matched by a piece of their text; a listed piece that no block contains fails the test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dspy
import pytest

from metaspo_dspy.testing import FakeEngine, fake_lm

README = Path(__file__).resolve().parents[1] / "README.md"
#: the model objects the fixture substitutes (the README builds them for OpenAI)
MODELS = ("task_lm", "optimizer_lm")
SKIPPED = {
    'source="hub"': "loads tasks from the Hugging Face Hub and from fetched (not bundled) data, neither reachable "
    "from tests, and runs MetaSPO with its defaults on 4 tasks x 50 examples (18,200 task calls)",
}


def readme_blocks() -> list[tuple[int, str]]:
    """``(line, code)`` of every ```python block in README.md."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if current is None and re.fullmatch(r"```python\s*", line):
            current, start = [], number + 1
        elif current is not None and line.strip() == "```":
            blocks.append((start, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


BLOCKS = readme_blocks()


def skip_reason(code: str) -> str | None:
    return next((reason for piece, reason in SKIPPED.items() if piece in code), None)


def without_model_lines(code: str, where: str):
    """The block's code without its top-level assignments to the model names (the fixture's)."""
    tree = ast.parse(code, filename=where)
    tree.body = [
        node
        for node in tree.body
        if not (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id in MODELS for t in node.targets))
    ]
    return compile(tree, where, "exec")


class ReaderSession:
    """Runs README blocks in order in one namespace; each block at most once."""

    def __init__(self, namespace: dict):
        self.namespace = namespace
        self.done: dict[int, BaseException | None] = {}

    def run_through(self, index: int) -> None:
        for i in range(index + 1):
            line, code = BLOCKS[i]
            if i in self.done or skip_reason(code):
                continue
            try:
                exec(without_model_lines(code, f"README.md:{line}"), self.namespace)
                self.done[i] = None
            except BaseException as exc:
                self.done[i] = exc
        error = self.done.get(index)
        if error is not None:
            raise error


def _reviews(prefix: str, n: int) -> list[dspy.Example]:
    return [
        dspy.Example(question=f"{prefix} review {i}: it was fine", answer=str(i % 5 + 1)).with_inputs("question")
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> ReaderSession:
    beauty_train, game_train, beauty_test = _reviews("beauty", 5), _reviews("game", 5), _reviews("beauty test", 4)
    engine = FakeEngine(gold={e.question: e.answer for e in [*beauty_train, *game_train, *beauty_test]})

    class MyRAG(dspy.Module):
        """The reader's own retrieval-augmented program."""

        def __init__(self):
            super().__init__()
            self.generate = dspy.ChainOfThought("context, question -> answer")

        def forward(self, question):
            return self.generate(context="Reviews are rated from 1 to 5 stars.", question=question)

    namespace = {
        "__name__": "readme",
        "task_lm": fake_lm("readme-task", engine, temperature=0.0),
        "optimizer_lm": fake_lm("readme-optimizer", engine, temperature=1.0),
        "beauty_train": beauty_train,
        "game_train": game_train,
        "beauty_test": beauty_test,
        "my_rag_program": MyRAG(),
    }
    reader = ReaderSession(namespace)
    reader.cwd = tmp_path_factory.mktemp("readme")
    reader.engine = engine
    return reader


def test_the_readme_has_python_blocks_and_every_skip_names_one():
    assert len(BLOCKS) >= 5
    for piece in SKIPPED:
        assert any(piece in code for _, code in BLOCKS), f"SKIPPED lists {piece!r}, which no README block contains"


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"line-{line}" for line, _ in BLOCKS])
def test_readme_block_runs(index, session, monkeypatch):
    line, code = BLOCKS[index]
    reason = skip_reason(code)
    if reason:
        pytest.skip(f"README.md:{line}: {reason}")
    monkeypatch.chdir(session.cwd)
    session.run_through(index)


def test_the_api_block_ran_on_the_fake_model(session, monkeypatch):
    """The substituted models really served the README's calls, with the optimized system prompt."""
    index = next(i for i, (_, code) in enumerate(BLOCKS) if "best = tp.compile(" in code)
    monkeypatch.chdir(session.cwd)
    session.run_through(index)
    best = session.namespace["best"]
    assert (session.cwd / "runs" / "review" / "metaspo_run.json").exists() and (session.cwd / "out.json").exists()
    task_calls = [r for r in session.engine.requests if r.kind == "task"]
    assert best.system_prompt.text in {r.system_prompt for r in task_calls}
    rag_calls = [r for r in task_calls if "context" in r.inputs]
    assert rag_calls and {r.system_prompt for r in rag_calls} == {best.system_prompt.text}
