"""Throughput: achieved calls/s over the ideal (concurrency / latency) against a 100 ms mock model.

Compares, for each engine (LiteLLM; DSPy's native client, the default for OpenAI-compatible servers)
and concurrency (1, 8, 32, 64), plus the native engine over two client processes at 32 and 64:
  * our grid evaluator (``metaspo_dspy.evaluation.grid.GridEvaluator``, the path ``compile`` uses,
    system-prompt adapter and journaling included),
  * ``dspy.Evaluate`` with the same program and number of threads,
  * a sequential loop, one call after another, like the reference implementation.

Each rate is the median of three runs of 20 rounds (``concurrency x 20`` calls).

    python benchmarks/throughput.py            # full (a few minutes)
    python benchmarks/throughput.py --quick    # < 1 minute
"""

from __future__ import annotations

import argparse
import time
from statistics import median

from common import disable_dspy_cache, markdown, mock_lm, mock_server, save


def _examples(tag: str, n: int):
    import dspy

    return [dspy.Example(question=f"{tag} {i}: (A) yes (B) no", answer="A").with_inputs("question") for i in range(n)]


def _program():
    import dspy

    return dspy.Predict(dspy.Signature("question -> answer", "Pick the option letter."))


def metric(example, prediction, trace=None) -> bool:
    return True


def ours(lm, concurrency: int, n: int, tag: str, processes: int = 1) -> float:
    from metaspo_dspy.evaluation.grid import GridEvaluator
    from metaspo_dspy.evaluation.records import EvalJob

    evaluator = GridEvaluator(task_lm=lm, num_threads=concurrency, progress=False, num_processes=processes)
    examples = _examples(tag, n + 2 * concurrency)
    try:  # warm up (and start the worker processes)
        evaluator.evaluate([EvalJob("t", _program(), "Be brief.", "user", examples[: 2 * concurrency], metric)])
        start = time.perf_counter()
        evaluator.evaluate([EvalJob("t", _program(), "Be brief.", "user", examples[2 * concurrency :], metric)])
        return n / (time.perf_counter() - start)
    finally:
        evaluator.close()


def dspy_evaluate(lm, concurrency: int, n: int, tag: str) -> float:
    import dspy

    examples = _examples(tag, n + concurrency)
    with dspy.context(lm=lm):
        kwargs = dict(metric=metric, num_threads=concurrency, display_progress=False, max_errors=10**6)
        dspy.Evaluate(devset=examples[:concurrency], **kwargs)(_program())
        start = time.perf_counter()
        dspy.Evaluate(devset=examples[concurrency:], **kwargs)(_program())
    return n / (time.perf_counter() - start)


def sequential(lm, n: int, tag: str) -> float:
    import dspy

    program = _program()
    with dspy.context(lm=lm):
        program(question="warm up")
        start = time.perf_counter()
        for example in _examples(tag, n):
            program(**example.inputs())
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    disable_dspy_cache()
    levels = [1, 8, 32] if args.quick else [1, 8, 32, 64]
    per_level = 3 if args.quick else 20
    reps = range(1 if args.quick else 3)  # the median of 3 runs: this machine is small and noisy
    rows, results = [], []
    with mock_server("--latency", str(args.latency)) as url:
        for engine in ("litellm", "native"):
            lm = mock_lm(url, engine)
            seq = sequential(lm, 10 if args.quick else 30, f"seq-{engine}")
            for concurrency in levels:
                n = max(per_level * concurrency, 20)
                ideal = concurrency / args.latency
                ours_rate = median(ours(lm, concurrency, n, f"ours-{engine}-{concurrency}-{r}") for r in reps)
                evaluate_rate = median(
                    dspy_evaluate(lm, concurrency, n, f"eval-{engine}-{concurrency}-{r}") for r in reps
                )
                row = {
                    "engine": engine, "processes": 1, "concurrency": concurrency, "calls": n,
                    "ideal_calls_per_s": ideal, "ours_calls_per_s": ours_rate,
                    "dspy_evaluate_calls_per_s": evaluate_rate, "sequential_calls_per_s": seq,
                }  # fmt: skip
                results.append(row)
                rows.append([engine, 1, concurrency, ours_rate, ours_rate / ideal, evaluate_rate / ideal, seq / ideal])
                print(rows[-1], flush=True)
        lm = mock_lm(url, "native")
        for concurrency in [c for c in levels if c >= 32]:
            n = max(per_level * concurrency, 20)
            ideal = concurrency / args.latency
            rate = median(ours(lm, concurrency, n, f"ours-2p-{concurrency}-{r}", processes=2) for r in reps)
            results.append({
                "engine": "native", "processes": 2, "concurrency": concurrency, "calls": n,
                "ideal_calls_per_s": ideal, "ours_calls_per_s": rate,
            })  # fmt: skip
            rows.append(["native", 2, concurrency, rate, rate / ideal, "-", "-"])
            print(rows[-1], flush=True)
    table = markdown(
        rows,
        [
            "engine",
            "processes",
            "concurrency",
            "ours calls/s",
            "ours / ideal",
            "dspy.Evaluate / ideal",
            "sequential / ideal",
        ],
    )
    save("throughput", {"latency_s": args.latency, "quick": args.quick, "rows": results}, table)


if __name__ == "__main__":
    main()
