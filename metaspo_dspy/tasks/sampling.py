"""The reference's shuffle-and-cut sampling of train and test splits.

The reference shuffles the *test* split with the fixed seed 42 whatever the run seed
(``random.seed(42); random.shuffle(test)``), then the *train* split with the run seed (skipped
when the seed is None), and cuts them to ``test_size`` and ``train_size``. We do the same with a
private ``random.Random(seed)``, which produces the same permutation as seeding the global module
(the module's functions are methods of one hidden ``Random`` instance) without touching global
state. Unlike the reference (which asserts), a train size above what exists is capped with a
:class:`SampleSizeWarning`; a test size above what exists is capped silently by the reference and
logged here.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")
TEST_SHUFFLE_SEED = 42
logger = logging.getLogger(__name__)


class SampleSizeWarning(UserWarning):
    """A requested split size exceeds the examples available; the split was capped."""


def shuffle_and_cut(rows: Sequence[T], size: int | None, seed: int | None) -> list[T]:
    """A copy of ``rows`` shuffled with ``random.Random(seed)`` (unshuffled when ``seed`` is
    None), cut to ``size`` (all when None). ``rows`` itself is not modified."""
    out = list(rows)
    if seed is not None:
        random.Random(seed).shuffle(out)
    return out if size is None else out[:size]


def _check_size(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")


def sample_splits(
    train: Sequence[T],
    test: Sequence[T],
    train_size: int | None,
    test_size: int | None,
    seed: int | None,
    task: str = "",
) -> tuple[list[T], list[T]]:
    """The reference's ``(train[:train_size], test[:test_size])`` after its two shuffles.

    Raises ``ValueError`` for a negative or non-integer size; warns when a size is capped.
    """
    _check_size("train_size", train_size)
    _check_size("test_size", test_size)
    if train_size is not None and train_size > len(train):
        warnings.warn(
            f"task {task!r}: train_size={train_size} but only {len(train)} train examples exist; using {len(train)}",
            SampleSizeWarning,
            stacklevel=3,
        )
    if test_size is not None and test_size > len(test):
        logger.warning(
            "task %r: test_size=%d but only %d test examples exist; using %d",
            task,
            test_size,
            len(test),
            len(test),
        )
    return shuffle_and_cut(train, train_size, seed), shuffle_and_cut(test, test_size, TEST_SHUFFLE_SEED)
