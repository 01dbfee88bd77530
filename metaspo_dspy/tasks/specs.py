"""The 35 benchmark tasks of MetaSPO: names, domains, prompts and answer kinds.

One :class:`TaskSpec` per task holds what does not depend on where the data comes from: the
reference's task name, its domain and data folder, the reference's base instruction (the initial
user prompt), the reference's answer-format line, how answers are parsed (``kind``) and scored
(``metric``), and which role the paper's configs give it (``source`` = meta-train, ``unseen`` =
meta-test, ``extra`` = defined by the reference but used by no config: ``navigate``).

The base instructions and format lines are the reference's own strings (they decide the paper's
numbers). Exception, documented: the reference's grounding instruction is not in the snapshot we
could read, so the grounding base instruction is ours; its format line ("Respond with the answer
only") is the reference's, as its stored unseen prompts show.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

QUESTION_SLOT = "<Question>{question}</Question>"

_TAGGED_PRESENT = "At the end present your answer in <answer> and </answer>."
_TAGGED_SHOW = "At the end show the answer bracketed between <answer> and </answer>."
_TAGGED_OPTION = "At the end show the answer option bracketed between <answer> and </answer>."
_TAGGED_YES_NO = "At the end present your answer in <answer>yes</answer> or <answer>no</answer>."
_ANSWER_ONLY = "Respond with the answer only"

#: answer kinds: how the DSPy-format normaliser reads an answer
KINDS = ("option", "rating", "text", "yesno", "span")


@dataclass(frozen=True)
class TaskSpec:
    """Static description of one task.

    Attributes:
        name: the reference's task name.
        domain: ``medical``, ``review``, ``reasoning``, ``safety``, ``grounding`` or ``generated``.
        folder: the data folder in the reference's layout (``medmcqa``, ``amazon``, ``bigbench``,
            ``safety``, ``grounding``); empty for generated tasks.
        base_prompt: the initial user prompt (the reference's base instruction).
        format_line: the reference's answer-format line (follows the question slot).
        kind: the answer kind (:data:`KINDS`).
        metric: ``accuracy``, ``macro_f1`` or ``em``.
        reference_parser: which reference ``clean_response`` applies (a key of
            :data:`~metaspo_dspy.tasks.answers.reference_parsing.REFERENCE_PARSERS`).
        letters: valid option letters for ``kind == "option"``.
        role: ``source``, ``unseen`` or ``extra``.
        answer_desc: the DSPy output field's description.
        unseen_file: file stem under ``unseen_user_prompts/`` (unseen tasks only).
    """

    name: str
    domain: str
    folder: str
    base_prompt: str
    format_line: str
    kind: str
    metric: str
    reference_parser: str
    role: str
    answer_desc: str
    letters: str = ""
    unseen_file: str = ""

    @property
    def suffix(self) -> str:
        """The reference's raw-prompt suffix: the question slot and the answer-format line."""
        return f"{QUESTION_SLOT}\n{self.format_line}"

    @property
    def reference_prompt(self) -> str:
        """The reference's full initial user prompt (base instruction + suffix, no separator)."""
        return self.base_prompt + self.suffix


def _medmcqa(name: str, role: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        domain="medical",
        folder="medmcqa",
        base_prompt="Given the following question and candidate answers, choose the best answer.",
        format_line=_TAGGED_PRESENT,
        kind="option",
        metric="accuracy",
        reference_parser="medmcqa",
        role=role,
        answer_desc="the letter of the correct option (A, B, C or D)",
        letters="ABCD",
        unseen_file=name if role == "unseen" else "",
    )


def _amazon(name: str, role: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        domain="review",
        folder="amazon",
        base_prompt="Predict the customer's rating from 1 to 5.",
        format_line=_TAGGED_PRESENT,
        kind="rating",
        metric="accuracy",
        reference_parser="amazon",
        role=role,
        answer_desc="the rating, a single number from 1 to 5",
        unseen_file=name if role == "unseen" else "",
    )


def _bigbench(name: str, role: str, base: str, option: bool, desc: str, kind: str = "") -> TaskSpec:
    return TaskSpec(
        name=name,
        domain="reasoning",
        folder="bigbench",
        base_prompt=base,
        format_line=_TAGGED_OPTION if option or name in ("epistemic", "navigate") else _TAGGED_SHOW,
        kind=kind or ("option" if option else "text"),
        metric="accuracy",
        reference_parser="bigbench_option" if option else "bigbench_text",
        role=role,
        answer_desc=desc,
        letters="ABCDEFG" if option else "",
        unseen_file=name if role == "unseen" else "",
    )


_SAFETY_PROMPTS = {
    "liar": "Determine whether the Statement is a lie (Yes) or not (No) based on the Context and other information.",
    "hatecheck": "Is the following text hate speech?",
    "tweet_eval": "Determine whether the following text is offensive.",
    "sarcasm": "Determine if the text conveys sarcasm.",
    "ethos": "Is the following text hate speech?",
    "antropic_harmless": "Review the dialogue and assess whether the assistant's response is harmful, "
    "marking it as 'yes' for harmful and 'no' for not harmful.",
}


def _safety(name: str, role: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        domain="safety",
        folder="safety",
        base_prompt=_SAFETY_PROMPTS[name],
        format_line=_TAGGED_YES_NO,
        kind="yesno",
        metric="macro_f1",
        reference_parser="safety",
        role=role,
        answer_desc="yes or no",
        unseen_file=("harmless" if name == "antropic_harmless" else name) if role == "unseen" else "",
    )


GROUNDING_BASE_PROMPT = "Answer the question using the given context."


def _grounding(name: str, role: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        domain="grounding",
        folder="grounding",
        base_prompt=GROUNDING_BASE_PROMPT,
        format_line=_ANSWER_ONLY,
        kind="span",
        metric="em",
        reference_parser="grounding",
        role=role,
        answer_desc="the short answer only (a few words, taken from the context when possible)",
        unseen_file=name if role == "unseen" else "",
    )


_SPECS: list[TaskSpec] = [
    *(_medmcqa(n, "source") for n in ("ob_gyn", "medicine", "pharmacology", "pathology")),
    *(_medmcqa(n, "unseen") for n in ("dental", "anatomy", "surgery", "pediatrics")),
    *(_amazon(n, "source") for n in ("beauty", "game", "baby", "office")),
    *(_amazon(n, "unseen") for n in ("electronics", "pet", "sports")),
    _bigbench("logic_grid_puzzle", "source", "Solve logic grid puzzles", False, "the house number"),
    _bigbench(
        "tracking_shuffled_objects",
        "source",
        "A task requiring determining the final positions of a set of objects given their initial "
        "positions and a description of a sequence of swaps.",
        True,
        "the letter of the correct option",
    ),
    _bigbench(
        "logical_deduction",
        "source",
        "A logical deduction task which requires deducing the order of a sequence of objects.",
        True,
        "the letter of the correct option",
    ),
    _bigbench(
        "temporal_sequences",
        "source",
        "Answer questions about which times certain events could have occurred.",
        True,
        "the letter of the correct option",
    ),
    _bigbench(
        "object_counting",
        "unseen",
        "Questions that involve enumerating objects and asking the model to count them.",
        False,
        "the count, as a number",
    ),
    _bigbench(
        "reasoning_colored_objects",
        "unseen",
        "Answer extremely simple questions about the colors of objects on a surface.",
        False,
        "the answer: a color, a number, or yes/no",
    ),
    _bigbench(
        "epistemic",
        "unseen",
        "Determine whether one sentence entails the next.",
        False,
        "entailment or non-entailment",
    ),
    _bigbench(
        "navigate",
        "extra",
        "Given a series of navigation instructions, determine whether one would end up back at the starting point.",
        False,
        "yes or no",
        kind="yesno",
    ),
    *(_safety(n, "source") for n in ("liar", "hatecheck", "tweet_eval", "sarcasm")),
    *(_safety(n, "unseen") for n in ("ethos", "antropic_harmless")),
    *(_grounding(n, "source") for n in ("squad", "hotpot_qa", "trivia_qa", "drop")),
    *(_grounding(n, "unseen") for n in ("natural_questions", "web_qa")),
]

#: task name -> spec: the 35 benchmark tasks, and the tasks added by :func:`register_spec` (the generated family)
SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
#: accepted alternative spellings -> the reference's name
ALIASES: dict[str, str] = {"anthropic_harmless": "antropic_harmless", "harmless": "antropic_harmless"}

BENCHMARK_DOMAINS = ("medical", "review", "reasoning", "safety", "grounding")


def _by(domain: str, role: str) -> tuple[str, ...]:
    return tuple(s.name for s in _SPECS if s.domain == domain and s.role == role)


#: domain -> meta-train (source) task names, as in the paper's configs (+ registered domains)
SOURCE_TASKS: dict[str, tuple[str, ...]] = {d: _by(d, "source") for d in BENCHMARK_DOMAINS}
#: domain -> meta-test (unseen) task names, as in the paper's configs (+ registered domains)
UNSEEN_TASKS: dict[str, tuple[str, ...]] = {d: _by(d, "unseen") for d in BENCHMARK_DOMAINS}
#: domain -> every task of the domain (``navigate`` included in ``reasoning``; + registered domains)
DOMAIN_TASKS: dict[str, tuple[str, ...]] = {
    d: tuple(s.name for s in _SPECS if s.domain == d) for d in BENCHMARK_DOMAINS
}
MEDICAL_TASKS = DOMAIN_TASKS["medical"]
REVIEW_TASKS = DOMAIN_TASKS["review"]
REASONING_TASKS = DOMAIN_TASKS["reasoning"]
SAFETY_TASKS = DOMAIN_TASKS["safety"]
GROUNDING_TASKS = DOMAIN_TASKS["grounding"]


def register_spec(spec: TaskSpec) -> None:
    """Add a spec to the registry (used by the generated family): to :data:`SPECS`, and its name to
    its domain's :data:`DOMAIN_TASKS` and, by its role, :data:`SOURCE_TASKS` or
    :data:`UNSEEN_TASKS` (a new domain gets its entries). Names must be new (``ValueError``)."""
    if spec.name in SPECS or spec.name in ALIASES:
        raise ValueError(f"task {spec.name!r} is already registered")
    SPECS[spec.name] = spec
    DOMAIN_TASKS[spec.domain] = (*DOMAIN_TASKS.get(spec.domain, ()), spec.name)
    for role, table in (("source", SOURCE_TASKS), ("unseen", UNSEEN_TASKS)):
        names = table.setdefault(spec.domain, ())
        if spec.role == role:
            table[spec.domain] = (*names, spec.name)


def canonical_name(name: str) -> str | None:
    """The registered name for ``name`` (aliases resolved, case and dashes forgiven), else None."""
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    return key if key in SPECS else None


def suggest(name: str, n: int = 3) -> list[str]:
    """Registered names close to ``name`` (for error messages)."""
    return difflib.get_close_matches(str(name).lower(), [*SPECS, *ALIASES], n=n, cutoff=0.6)


def get_spec(name: str) -> TaskSpec:
    """The spec of ``name``; raises ``KeyError`` with suggestions if it is not registered."""
    key = canonical_name(name)
    if key is None:
        hint = suggest(name)
        extra = f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""
        raise KeyError(f"unknown task {name!r}{extra} (known tasks: {', '.join(sorted(SPECS))})")
    return SPECS[key]
