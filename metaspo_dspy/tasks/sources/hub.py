"""Hugging Face ``datasets`` sources for the benchmark tasks.

Two layers, so the mapping can be tested without the hub:

* :func:`rows_from_hub` streams raw rows of one split with ``datasets.load_dataset`` (the only
  function that touches the network);
* pure ``map_<source>(hf_row) -> reference-format row | None`` functions (``None`` = skip the
  row) turn a hub row into ``{"question": ..., "answer": ...}`` / ``{"question": ..., "answers":
  [...]}`` exactly as the reference's files look.

:data:`HUB_SOURCES` says, per task, which dataset, config, filter, splits and mapper are used
(the table below). The ids are the hub's current names; this code was written
offline, so an id that moved upstream surfaces as a :class:`TaskLoadError` naming it. A source
with a single split is carved into train (40 %) and test (60 %) with a fixed, task-specific seed.
Only the first ``limit`` rows (after filtering) of each split are read, in the hub's order.

=========================  ==============================================  ===================  =============
task(s)                    dataset (config / filter)                       splits (train/test)  mapper
=========================  ==============================================  ===================  =============
8 MedMCQA subjects         openlifescienceai/medmcqa, subject_name = ...   train / validation   medmcqa
7 Amazon categories        McAuley-Lab/Amazon-Reviews-2023 raw jsonl       train, carved        amazon_review
                           (All_Beauty, Video_Games, Baby_Products,
                           Office_Products, Electronics, Pet_Supplies,
                           Sports_and_Outdoors)
8 BIG-bench tasks          tasksource/bigbench, config = BIG-bench name    train / validation   bigbench_*
liar                       ucsbnlp/liar (labels false/true only)           train / test         liar
hatecheck                  Paul/hatecheck                                  test, carved         hatecheck
tweet_eval                 cardiffnlp/tweet_eval, offensive                train / test         tweet_eval
sarcasm                    iabufarha/ar_sarcasm (ArSarcasm)                train / test         ar_sarcasm
ethos                      iamollas/ethos, binary                          train, carved        ethos
antropic_harmless          Anthropic/hh-rlhf, data_dir harmless-base       train / test         hh_rlhf
squad                      rajpurkar/squad                                 train / validation   squad
hotpot_qa                  hotpotqa/hotpot_qa, distractor                  train / validation   hotpot_qa
trivia_qa                  mrqa-workshop/mrqa, subset TriviaQA-web         train / validation   mrqa
natural_questions          mrqa-workshop/mrqa, NaturalQuestionsShort       train / validation   mrqa
drop                       ucinlp/drop                                     train / validation   drop
web_qa                     stanfordnlp/web_questions (no context)          train / test         web_questions
=========================  ==============================================  ===================  =============
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from metaspo_dspy.errors import TaskLoadError
from metaspo_dspy.tasks.sources.bigbench import bigbench_answer_text, option_block

Row = dict[str, Any]
LETTERS = "ABCDEFG"
MAX_GROUNDING_CHARS = 2500


def _stable(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


# ---- mapping functions (pure) --------------------------------------------------------------
def map_medmcqa(row: Row) -> Row | None:
    """``openlifescienceai/medmcqa``: question, opa..opd, cop (0-3) -> question with ``(A)..(D)``."""
    cop = row.get("cop")
    if not isinstance(cop, int) or not 0 <= cop <= 3:
        return None
    options = [row["opa"], row["opb"], row["opc"], row["opd"]]
    lines = "\n".join(f"({LETTERS[i]}) {str(o).strip()}" for i, o in enumerate(options))
    question = f"{str(row['question']).strip()}\nOptions:\n{lines}"
    return {"question": question, "answer": LETTERS[cop], "subject": row.get("subject_name", "")}


def map_amazon_review(row: Row) -> Row | None:
    """Amazon Reviews 2023 (``rating``, ``title``, ``text``) -> ``title: ..\\ntext: ..``, int rating."""
    try:
        rating = int(float(row["rating"]))
    except (KeyError, TypeError, ValueError):
        return None
    if not 1 <= rating <= 5:
        return None
    sentiment = "positive" if rating >= 4 else "neutral" if rating == 3 else "negative"
    question = f"title: {row.get('title', '')}\ntext: {row.get('text', '')}"
    return {"question": question, "answer": rating, "sentiment": sentiment}


def _bigbench_input(row: Row) -> str:
    """The task input of a ``tasksource/bigbench`` row, without its ``choice:`` lines and Q/A cues."""
    lines = [ln for ln in str(row["inputs"]).split("\n") if not ln.strip().startswith("choice:")]
    text = "\n".join(lines).strip()
    if text.startswith("Q:"):
        text = text[2:].strip()
    if text.endswith("A:"):
        text = text[:-2].rstrip()
    return text


def map_bigbench_option(row: Row, shuffle: bool = False) -> Row | None:
    """A multiple-choice BIG-bench row -> input + ``Options:`` block, answer = the correct letter.
    ``shuffle`` reorders the options with a seed taken from the input (temporal_sequences lists the
    right answer first)."""
    choices = list(row.get("multiple_choice_targets") or [])
    scores = list(row.get("multiple_choice_scores") or [])
    if not choices or len(choices) != len(scores) or len(choices) > len(LETTERS) or max(scores) <= 0:
        return None
    text = _bigbench_input(row)
    pairs = list(zip(choices, scores, strict=True))
    if shuffle:
        random.Random(_stable(text)).shuffle(pairs)
    letter = LETTERS[next(i for i, (_, s) in enumerate(pairs) if s > 0)]
    return {"question": text + option_block([c for c, _ in pairs]), "answer": letter}


def map_bigbench_temporal(row: Row) -> Row | None:
    """temporal_sequences: :func:`map_bigbench_option` with shuffled options."""
    return map_bigbench_option(row, shuffle=True)


def map_bigbench_target(row: Row) -> Row | None:
    """A BIG-bench row with a text target -> lower-case answer, number words as digits."""
    targets = list(row.get("targets") or [])
    if not targets:
        return None
    return {"question": _bigbench_input(row), "answer": bigbench_answer_text(targets)}


def map_bigbench_navigate(row: Row) -> Row | None:
    """navigate: input + ``Options:\\n- Yes\\n- No``, answer yes/no."""
    mapped = map_bigbench_target(row)
    if mapped is None:
        return None
    answer = {"true": "yes", "false": "no"}.get(mapped["answer"], mapped["answer"])
    if answer not in ("yes", "no"):
        return None
    return {"question": mapped["question"] + "\nOptions:\n- Yes\n- No", "answer": answer}


def map_liar(row: Row) -> Row | None:
    """LIAR (``label`` 0 = false, 3 = true; others dropped) -> ProTeGi's binary text, yes = a lie."""
    label = row.get("label")
    if label not in (0, 3):
        return None
    question = (
        f"Statement: {row.get('statement', '')}\nJob title: {row.get('job_title', '')}\n"
        f"State: {row.get('state_info', '')}\nParty: {row.get('party_affiliation', '')}\n"
        f"Context: {row.get('context', '')}"
    )
    return {"question": question, "answer": "yes" if label == 0 else "no"}


def map_hatecheck(row: Row) -> Row | None:
    """HateCheck (``test_case``, ``label_gold``) -> yes = hateful."""
    return {
        "question": str(row["test_case"]),
        "answer": "yes" if row.get("label_gold") == "hateful" else "no",
        "functionality": row.get("functionality", ""),
    }


def map_binary_text(text_key: str, label_key: str) -> Callable[[Row], Row | None]:
    """A mapper for ``{text_key: str, label_key: 0/1}`` rows -> yes = label 1."""

    def mapper(row: Row) -> Row | None:
        label = row.get(label_key)
        if label not in (0, 1, True, False):
            return None
        return {"question": str(row[text_key]), "answer": "yes" if int(label) == 1 else "no"}

    mapper.__name__ = f"map_{text_key}_{label_key}"
    return mapper


map_tweet_eval = map_binary_text("text", "label")
map_ar_sarcasm = map_binary_text("tweet", "sarcasm")


def map_ethos(row: Row) -> Row | None:
    """ETHOS binary (``text``, ``label`` 1 = hate; a float ``isHate`` >= 0.5 also accepted)."""
    label = row.get("label", row.get("isHate"))
    if label is None:
        return None
    return {"question": str(row.get("text", row.get("comment", ""))), "answer": "yes" if float(label) >= 0.5 else "no"}


def map_hh_rlhf(row: Row) -> Row | None:
    """hh-rlhf harmless pair -> ONE side, picked by a hash of the pair: the rejected (less
    harmless) dialogue is "yes", the chosen one "no"."""
    chosen, rejected = str(row["chosen"]).strip(), str(row["rejected"]).strip()
    if _stable(chosen + "\x00" + rejected) % 2:
        return {"question": rejected, "answer": "yes"}
    return {"question": chosen, "answer": "no"}


def _dedupe(answers: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for answer in answers:
        text = str(answer).strip()
        if text and text not in out:
            out.append(text)
    return out


def grounding_row(context: str, question: str, answers: Iterable[Any], **extra: Any) -> Row | None:
    """``Context: ..\\nQuestion: ..`` with de-duplicated answers; None if too long or no answer."""
    golds = _dedupe(answers)
    if not golds or len(context) + len(question) > MAX_GROUNDING_CHARS:
        return None
    return {"question": f"Context: {context.strip()}\nQuestion: {question.strip()}", "answers": golds, **extra}


def map_squad(row: Row) -> Row | None:
    """SQuAD (``context``, ``question``, ``answers.text``)."""
    return grounding_row(row["context"], row["question"], row["answers"]["text"], id=str(row.get("id", "")))


def map_hotpot_qa(row: Row) -> Row | None:
    """HotpotQA distractor: the context is the supporting-fact sentences, in order."""
    titles = list(row["context"]["title"])
    sentences = list(row["context"]["sentences"])
    facts = row["supporting_facts"]
    parts = []
    for title, sent_id in zip(facts["title"], facts["sent_id"], strict=False):
        if title in titles and 0 <= sent_id < len(sentences[titles.index(title)]):
            parts.append(sentences[titles.index(title)][sent_id].strip())
    return grounding_row(" ".join(parts), row["question"], [row["answer"]], id=str(row.get("id", "")))


def map_mrqa(row: Row) -> Row | None:
    """MRQA (``context``, ``question``, ``answers``): NaturalQuestionsShort, TriviaQA-web."""
    return grounding_row(row["context"], row["question"], row["answers"], id=str(row.get("qid", "")))


def map_drop(row: Row) -> Row | None:
    """DROP (``passage``, ``question``, ``answers_spans.spans``)."""
    return grounding_row(
        row["passage"], row["question"], row["answers_spans"]["spans"], id=str(row.get("query_id", ""))
    )


def map_web_questions(row: Row) -> Row | None:
    """WebQuestions has no context: the question alone (closed-book), answers as given."""
    golds = _dedupe(row.get("answers") or [])
    return {"question": str(row["question"]).strip(), "answers": golds} if golds else None


# ---- the per-task table --------------------------------------------------------------------
@dataclass(frozen=True)
class HubSource:
    """Where a task's data lives on the hub and how to map it.

    ``train_split``/``test_split`` name the hub splits (``test_split=None``: carve the train split);
    ``where`` keeps rows whose fields equal the given values (before mapping).
    """

    path: str
    mapper: Callable[[Row], Row | None]
    name: str | None = None
    train_split: str = "train"
    test_split: str | None = "test"
    where: dict[str, Any] = field(default_factory=dict)
    data_files: str | None = None
    data_dir: str | None = None

    def describe(self) -> str:
        parts = [self.path if not self.data_files else self.data_files]
        if self.name:
            parts.append(f"config {self.name!r}")
        if self.data_dir:
            parts.append(f"data_dir {self.data_dir!r}")
        if self.where:
            parts.append(f"where {self.where}")
        return ", ".join(parts)


_MEDMCQA_SUBJECTS = {
    "ob_gyn": "Gynaecology & Obstetrics",
    "medicine": "Medicine",
    "pharmacology": "Pharmacology",
    "pathology": "Pathology",
    "dental": "Dental",
    "anatomy": "Anatomy",
    "surgery": "Surgery",
    "pediatrics": "Pediatrics",
}
_AMAZON_CATEGORIES = {
    "beauty": "All_Beauty",
    "game": "Video_Games",
    "baby": "Baby_Products",
    "office": "Office_Products",
    "electronics": "Electronics",
    "pet": "Pet_Supplies",
    "sports": "Sports_and_Outdoors",
}
_AMAZON_FILES = "hf://datasets/McAuley-Lab/Amazon-Reviews-2023/raw/review_categories/{}.jsonl"
_BIGBENCH = {
    "logic_grid_puzzle": ("logic_grid_puzzle", map_bigbench_target),
    "tracking_shuffled_objects": ("tracking_shuffled_objects", map_bigbench_option),
    "logical_deduction": ("logical_deduction", map_bigbench_option),
    "temporal_sequences": ("temporal_sequences", map_bigbench_temporal),
    "object_counting": ("object_counting", map_bigbench_target),
    "reasoning_colored_objects": ("reasoning_about_colored_objects", map_bigbench_target),
    "epistemic": ("epistemic_reasoning", map_bigbench_target),
    "navigate": ("navigate", map_bigbench_navigate),
}

HUB_SOURCES: dict[str, HubSource] = {
    **{
        task: HubSource("openlifescienceai/medmcqa", map_medmcqa, test_split="validation", where={"subject_name": s})
        for task, s in _MEDMCQA_SUBJECTS.items()
    },
    **{
        task: HubSource("json", map_amazon_review, test_split=None, data_files=_AMAZON_FILES.format(c))
        for task, c in _AMAZON_CATEGORIES.items()
    },
    **{
        task: HubSource("tasksource/bigbench", mapper, name=config, test_split="validation")
        for task, (config, mapper) in _BIGBENCH.items()
    },
    "liar": HubSource("ucsbnlp/liar", map_liar),
    "hatecheck": HubSource("Paul/hatecheck", map_hatecheck, train_split="test", test_split=None),
    "tweet_eval": HubSource("cardiffnlp/tweet_eval", map_tweet_eval, name="offensive"),
    "sarcasm": HubSource("iabufarha/ar_sarcasm", map_ar_sarcasm),
    "ethos": HubSource("iamollas/ethos", map_ethos, name="binary", test_split=None),
    "antropic_harmless": HubSource("Anthropic/hh-rlhf", map_hh_rlhf, data_dir="harmless-base"),
    "squad": HubSource("rajpurkar/squad", map_squad, test_split="validation"),
    "hotpot_qa": HubSource("hotpotqa/hotpot_qa", map_hotpot_qa, name="distractor", test_split="validation"),
    "trivia_qa": HubSource("mrqa-workshop/mrqa", map_mrqa, test_split="validation", where={"subset": "TriviaQA-web"}),
    "natural_questions": HubSource(
        "mrqa-workshop/mrqa", map_mrqa, test_split="validation", where={"subset": "NaturalQuestionsShort"}
    ),
    "drop": HubSource("ucinlp/drop", map_drop, test_split="validation"),
    "web_qa": HubSource("stanfordnlp/web_questions", map_web_questions),
}


def rows_from_hub(source: HubSource, split: str, limit: int | None = 2000) -> list[Row]:
    """Up to ``limit`` raw rows of ``split`` (those matching ``source.where``), streamed with
    ``datasets.load_dataset``. Raises :class:`TaskLoadError` if ``datasets`` is missing or the
    dataset cannot be loaded (offline, moved, gated)."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise TaskLoadError(f"the 'datasets' package is not installed ({exc})") from exc
    kwargs: dict[str, Any] = {"split": split, "streaming": True}
    if source.data_files:
        kwargs["data_files"] = {split: source.data_files}
    if source.data_dir:
        kwargs["data_dir"] = source.data_dir
    try:
        stream = datasets.load_dataset(source.path, source.name, **kwargs)
        rows: list[Row] = []
        for row in stream:
            if all(row.get(k) == v for k, v in source.where.items()):
                rows.append(dict(row))
                if limit is not None and len(rows) >= limit:
                    break
    except Exception as exc:
        raise TaskLoadError(f"hub dataset {source.describe()} split {split!r}: {type(exc).__name__}: {exc}") from exc
    return rows


def map_rows(rows: Iterable[Row], mapper: Callable[[Row], Row | None]) -> list[Row]:
    """Mapped rows, skipping those the mapper rejects and repeated questions."""
    seen: set[str] = set()
    out = []
    for row in rows:
        mapped = mapper(row)
        if mapped is not None and mapped["question"] not in seen:
            seen.add(mapped["question"])
            out.append(mapped)
    return out


def carve(rows: list[Row], task: str, train_share: float = 0.4) -> dict[str, list[Row]]:
    """Split one list of rows into train/test with a task-specific fixed seed."""
    rows = list(rows)
    random.Random(f"42:hub/{task}").shuffle(rows)
    cut = round(len(rows) * train_share)
    return {"train": rows[:cut], "test": rows[cut:]}


def hub_splits(task: str, limit: int | None = 2000) -> dict[str, list[Row]]:
    """The train/test rows of ``task`` from the hub, in the reference's row format."""
    source = HUB_SOURCES.get(task)
    if source is None:
        raise TaskLoadError(f"task {task!r} has no Hugging Face source")
    if source.test_split is None:
        pool = map_rows(rows_from_hub(source, source.train_split, limit), source.mapper)
        return carve(pool, task)
    train = map_rows(rows_from_hub(source, source.train_split, limit), source.mapper)
    seen = {r["question"] for r in train}
    test_rows = map_rows(rows_from_hub(source, source.test_split, limit), source.mapper)
    test = [r for r in test_rows if r["question"] not in seen]
    return {"train": train, "test": test}
