"""An offline family of procedurally generated reasoning tasks (domain ``generated``).

Eight small tasks with exact, mostly one-word answers, easy enough for a tiny model to get some
right, needing no data files. Each task's pool (200 train + 500 test, no question shared between
them) is drawn from ``random.Random(f"metaspo-gen:{generator_seed}:{task}")``: the same seed gives
the same examples. The usual shuffle-and-cut sampling then applies (:mod:`.sampling`).

Source (meta-train) tasks: ``gen_counting``, ``gen_boolean``, ``gen_navigation``, ``gen_swaps``.
Unseen (meta-test) tasks: ``gen_weekdays``, ``gen_sorting``, ``gen_parity``, ``gen_compare``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from metaspo_dspy.tasks.specs import TaskSpec, register_spec

N_TRAIN, N_TEST = 200, 500
_FORMAT_LINE = "At the end show the answer bracketed between <answer> and </answer>."
_NUMBER_WORDS = ["zero", "one", "two", "three", "four"]
_CATEGORIES = {
    "fruits": ["apple", "banana", "pear", "plum", "peach", "orange", "grape", "mango"],
    "animals": ["cat", "dog", "horse", "goat", "rabbit", "duck", "cow", "pig"],
    "vegetables": ["carrot", "onion", "potato", "cabbage", "leek", "turnip", "pepper", "radish"],
    "instruments": ["drum", "flute", "violin", "piano", "trumpet", "guitar", "harp", "cello"],
}
_NAMES = ["Alice", "Bob", "Claire", "Dave", "Eve"]
_COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink", "purple"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "lemon", "house", "bread", "chair", "music",
    "ocean", "pencil", "garden", "window", "silver", "rocket", "candle", "forest", "mirror", "basket",
    "dragon", "jungle", "kettle", "ladder", "magnet", "needle", "orbit", "parrot", "quilt", "saddle",
]  # fmt: skip


def _plural(item: str, n: int) -> str:
    return item if n == 1 else (item + "es" if item.endswith(("ch", "sh", "s")) else item + "s")


def gen_counting(rng: random.Random) -> tuple[str, str]:
    category = rng.choice(list(_CATEGORIES))
    items = rng.sample(_CATEGORIES[category], rng.randint(2, 4))
    counts = [rng.randint(1, 3) for _ in items]
    parts = [("a" if n == 1 else _NUMBER_WORDS[n]) + " " + _plural(i, n) for i, n in zip(items, counts, strict=True)]
    listing = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"I have {listing}. How many {category} do I have?", str(sum(counts))


def gen_boolean(rng: random.Random) -> tuple[str, str]:
    terms = []
    for _ in range(rng.randint(2, 4)):
        value = rng.choice(["True", "False"])
        terms.append(f"not {value}" if rng.random() < 0.35 else value)
    expr = terms[0]
    for term in terms[1:]:
        expr += f" {rng.choice(['and', 'or'])} {term}"
    return f"{expr} is", "true" if _truth(expr) else "false"


def _truth(expr: str) -> bool:
    """Python's value of an expression of True/False literals with not > and > or precedence."""
    return any(
        all((t.split()[-1] == "True") != t.startswith("not ") for t in clause.split(" and "))
        for clause in expr.split(" or ")
    )


def gen_navigation(rng: random.Random) -> tuple[str, str]:
    moves = [rng.randint(-5, 5) or 1 for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.5:
        moves.append(-sum(moves) or rng.choice([-2, 2]))
    else:
        moves.append(rng.choice([m for m in range(-5, 6) if m and m != -sum(moves)]))
    steps = " ".join(
        f"Take {abs(m)} step{'s' if abs(m) != 1 else ''} {'forward' if m > 0 else 'backward'}." for m in moves
    )
    return f"Always face forward. {steps} Are you back at the start?", "yes" if sum(moves) == 0 else "no"


def gen_swaps(rng: random.Random) -> tuple[str, str]:
    people = rng.sample(_NAMES, 3)
    balls = dict(zip(people, rng.sample(_COLOURS, 3), strict=True))
    start = ", ".join(f"{p} has a {c} ball" for p, c in balls.items())
    swaps = []
    for _ in range(rng.randint(1, 3)):
        a, b = rng.sample(people, 2)
        balls[a], balls[b] = balls[b], balls[a]
        swaps.append(f"{a} and {b} swap balls.")
    who = rng.choice(people)
    return f"{start}. {' '.join(swaps)} What colour is {who}'s ball now?", balls[who]


def gen_weekdays(rng: random.Random) -> tuple[str, str]:
    day, n = rng.randrange(7), rng.randint(1, 60)
    if rng.random() < 0.5:
        return f"Today is {_DAYS[day]}. What day of the week will it be in {n} days?", _DAYS[(day + n) % 7].lower()
    return f"Today is {_DAYS[day]}. What day of the week was it {n} days ago?", _DAYS[(day - n) % 7].lower()


def gen_sorting(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(_WORDS, rng.randint(3, 5))
    return f"Which word comes first in alphabetical order: {', '.join(words)}?", min(words)


def gen_parity(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 999)
    return f"Is {n} even or odd?", "even" if n % 2 == 0 else "odd"


def gen_compare(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(100), 2)
    return f"Which number is larger, {a} or {b}?", str(max(a, b))


GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "gen_counting": gen_counting,
    "gen_boolean": gen_boolean,
    "gen_navigation": gen_navigation,
    "gen_swaps": gen_swaps,
    "gen_weekdays": gen_weekdays,
    "gen_sorting": gen_sorting,
    "gen_parity": gen_parity,
    "gen_compare": gen_compare,
}
_PROMPTS = {
    "gen_counting": (
        "Count the items of the asked kind and give the total as a number.",
        "the total, a number",
        "text",
    ),
    "gen_boolean": ("Evaluate the boolean expression and answer true or false.", "true or false", "text"),
    "gen_navigation": ("Follow the steps and say whether you end where you started.", "yes or no", "yesno"),
    "gen_swaps": ("Track the balls through the swaps and name the colour asked for.", "a colour", "text"),
    "gen_weekdays": ("Work out the day of the week.", "a day of the week", "text"),
    "gen_sorting": ("Find the word that comes first in alphabetical order.", "one word from the list", "text"),
    "gen_parity": ("Say whether the number is even or odd.", "even or odd", "text"),
    "gen_compare": ("Say which of the two numbers is larger.", "the larger number", "text"),
}
GENERATED_SOURCE_TASKS = ("gen_counting", "gen_boolean", "gen_navigation", "gen_swaps")
GENERATED_UNSEEN_TASKS = ("gen_weekdays", "gen_sorting", "gen_parity", "gen_compare")
GENERATED_TASKS = GENERATED_SOURCE_TASKS + GENERATED_UNSEEN_TASKS


def generate_splits(task: str, generator_seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST) -> dict:
    """``{"train": rows, "test": rows}`` of distinct generated questions (reference row format)."""
    generator = GENERATORS[task]
    rng = random.Random(f"metaspo-gen:{generator_seed}:{task}")
    rows, seen = [], set()
    attempts = 0
    while len(rows) < n_train + n_test:
        attempts += 1
        if attempts > 200 * (n_train + n_test):
            raise RuntimeError(f"{task}: cannot generate {n_train + n_test} distinct questions")
        question, answer = generator(rng)
        if question not in seen:
            seen.add(question)
            rows.append({"question": question, "answer": answer})
    return {"train": rows[:n_train], "test": rows[n_train:]}


def _register() -> None:
    for name, (prompt, desc, kind) in _PROMPTS.items():
        register_spec(
            TaskSpec(
                name=name,
                domain="generated",
                folder="",
                base_prompt=prompt,
                format_line=_FORMAT_LINE,
                kind=kind,
                metric="accuracy",
                reference_parser="bigbench_text",
                role="source" if name in GENERATED_SOURCE_TASKS else "unseen",
                answer_desc=desc,
            )
        )


_register()
