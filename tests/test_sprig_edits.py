"""SPRIG's edits and upper-confidence bounds, on their own (no model): each edit type, duplicates,
the UCB pre-selection of edit types and of components."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from metaspo_dspy.optimize.sprig.edits import (
    EDIT_TYPES,
    Candidate,
    ComponentBandit,
    EditTypeBandit,
    join,
    pick_edit,
    rephrased,
)
from metaspo_dspy.optimize.sprig.library import ComponentLibrary

LIBRARY = ComponentLibrary.of([("Be exact.", "good_property"), ("Think step by step.", "cot"), ("Be brief.", "style")])


def _parent(*components: str, sources=None) -> Candidate:
    sources = list(sources) if sources is not None else [None] * len(components)
    return Candidate(7, 0, None, list(components), sources, score=0.5)


def _pick(edit_type, parent, seen=(), bandit=None, seed=0, max_chars=8000):
    return pick_edit(edit_type, parent, LIBRARY, bandit or ComponentBandit(), random.Random(seed), set(seen), max_chars)


def test_add_inserts_a_library_component_not_in_the_prompt_at_some_position():
    parent = _parent("Hello.", "Be exact.", sources=[None, 0])
    for seed in range(20):
        edit = _pick("add", parent, seed=seed)
        pos, index = edit.detail["position"], edit.detail["component"]
        assert index in (1, 2), "a component already in the prompt is never added again"
        assert edit.components == [*parent.components[:pos], LIBRARY[index].text, *parent.components[pos:]]
        assert edit.sources == [*parent.sources[:pos], index, *parent.sources[pos:]]
        assert edit.text == join(edit.components)


def test_add_prefers_the_component_with_the_highest_upper_confidence_bound():
    bandit = ComponentBandit()
    for index, reward in ((0, -0.2), (1, 0.3), (2, -0.1)):  # every component tried once
        bandit.record(index, reward)
    assert bandit.ranked(range(3), random.Random(0)) == [1, 2, 0]
    assert _pick("add", _parent("Hello."), bandit=bandit).detail["component"] == 1
    bandit.record(1, -0.9)  # now the worst on average
    assert _pick("add", _parent("Hello."), bandit=bandit).detail["component"] == 2


def test_untried_components_come_first_in_a_seeded_random_order():
    bandit = ComponentBandit()
    bandit.record(0, 0.5)
    orders = {tuple(bandit.ranked(range(3), random.Random(seed))) for seed in range(30)}
    assert all(order[-1] == 0 for order in orders) and len(orders) == 2
    assert bandit.ranked(range(3), random.Random(4)) == bandit.ranked(range(3), random.Random(4))


def test_swap_and_delete_need_enough_components_and_never_repeat_a_prompt():
    single = _parent("Only one.")
    assert _pick("swap", single) is None and _pick("delete", single) is None
    parent = _parent("A.", "B.", "C.", sources=[None, 1, 2])
    swap = _pick("swap", parent)
    i, j = swap.detail["positions"]
    expected = list(parent.components)
    expected[i], expected[j] = expected[j], expected[i]
    assert swap.components == expected and sorted(swap.sources, key=str) == sorted(parent.sources, key=str)
    delete = _pick("delete", parent)
    pos = delete.detail["position"]
    assert delete.components == parent.components[:pos] + parent.components[pos + 1 :]
    assert delete.detail["component"] == parent.sources[pos] and delete.detail["text"] == parent.components[pos]
    # Every deletion but one was made before: the remaining one is chosen.
    seen = {join(["B.", "C."]), join(["A.", "C."])}
    assert _pick("delete", parent, seen=seen).components == ["A.", "B."]
    all_swaps = {join(p) for p in (["B.", "A.", "C."], ["C.", "B.", "A."], ["A.", "C.", "B."])}
    assert _pick("swap", parent, seen=all_swaps) is None


def test_add_skips_prompts_made_before_and_prompts_that_are_too_long():
    parent = _parent("Hello.")
    seen = {join([c, "Hello."]) for c in LIBRARY.texts} | {join(["Hello.", c]) for c in LIBRARY.texts[:2]}
    assert _pick("add", parent, seen=seen).components == ["Hello.", "Be brief."]
    assert _pick("add", parent, max_chars=len("Hello.") + 5) is None


def test_rephrase_picks_a_random_position_and_takes_the_optimizer_text():
    parent = _parent("A.", "B.")
    positions = {_pick("rephrase", parent, seed=seed).detail["position"] for seed in range(20)}
    assert positions == {0, 1}
    assert _pick("rephrase", _parent()) is None
    first = _pick("rephrase", parent)
    done = rephrased(first, "  A   new\nwording. ")
    pos = first.detail["position"]
    assert done.components[pos] == "A new wording." and done.detail["original"] == parent.components[pos]
    assert done.components[1 - pos] == parent.components[1 - pos] and done.sources == parent.sources


def test_unknown_edit_type_is_an_error():
    with pytest.raises(ValueError, match="unknown edit type"):
        _pick("crossover", _parent("A."))


def test_untried_edit_types_come_first_then_slots_spread_over_types():
    bandit = EditTypeBandit()
    pending: Counter[str] = Counter()
    order = []
    for _ in range(8):
        choice = bandit.ranked(pending)[0]
        order.append(choice)
        pending[choice] += 1
    assert order == list(EDIT_TYPES) * 2


def _allocate(bandit: EditTypeBandit, slots: int) -> Counter[str]:
    pending: Counter[str] = Counter()
    for _ in range(slots):
        pending[bandit.ranked(pending)[0]] += 1
    return pending


def test_an_edit_type_that_never_succeeds_gets_fewer_slots():
    bandit = EditTypeBandit()
    for _ in range(5):
        for edit_type in EDIT_TYPES:
            bandit.record(edit_type, success=edit_type != "swap")
    slots = _allocate(bandit, 12)
    assert slots["swap"] < min(slots[t] for t in EDIT_TYPES if t != "swap")
    assert slots == _allocate(bandit, 12), "deterministic"
    # Failing again and again, its share keeps shrinking (exploration never takes it to zero).
    for _ in range(20):
        bandit.record("swap", False)
        for edit_type in ("add", "rephrase", "delete"):
            bandit.record(edit_type, True)
    later = _allocate(bandit, 12)
    assert later["swap"] <= slots["swap"] and bandit.score("swap") < bandit.score("add")
    assert bandit.to_dict()["swap"] == {"pulls": 25, "successes": 0, "ucb": bandit.score("swap")}


def test_success_rates_rank_tried_types_and_exploration_zero_is_greedy():
    greedy = EditTypeBandit(exploration=0.0)
    for edit_type, wins in (("add", 1), ("rephrase", 3), ("swap", 2), ("delete", 0)):
        for k in range(4):
            greedy.record(edit_type, k < wins)
    assert greedy.ranked() == ["rephrase", "swap", "add", "delete"]
