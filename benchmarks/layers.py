"""CPU time per call of our stack, by layer: our code, DSPy's adapter, the rest of DSPy, LiteLLM,
HTTP (openai SDK, httpx, sockets) and everything else -- for LiteLLM, the default native engine
(``build_lm``'s DSPy client with observed attempts) and a plain ``dspy.LM(engine="lm15")``.

One thread runs the evaluator's per-item path (``evaluation.run_item``: system-prompt adapter,
recorder, usage tracking) against a zero-latency mock server. The per-call CPU time is measured
without a profiler; the split by layer comes from a cProfile run (self time of each function,
grouped by the package it lives in) and is scaled to the unprofiled total.

    python benchmarks/layers.py            # 400 calls per engine
    python benchmarks/layers.py --quick    # 100 calls per engine
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections import Counter

from common import disable_dspy_cache, markdown, mock_lm, mock_server, save

LAYERS = [
    ("ours (metaspo_dspy)", ("/metaspo_dspy/",)),
    ("DSPy adapters", ("/dspy/adapters/",)),
    ("DSPy's HTTP client (lm15)", ("/dspy/_vendor/lm15/",)),
    ("DSPy other (Predict, LM, settings)", ("/dspy/",)),
    ("LiteLLM", ("/litellm/",)),
    ("HTTP (openai SDK, httpx, sockets)", ("/openai/", "/httpx/", "/httpcore/", "/h11/", "socket", "ssl", "selectors")),
]


def layer_of(filename: str, function: str) -> str:
    where = filename if filename != "~" else function
    for name, markers in LAYERS:
        if any(marker in where for marker in markers):
            return name
    return "other (stdlib, pydantic, json, ...)"


def measure(lm, engine: str, n: int) -> dict[str, float]:
    import dspy

    from metaspo_dspy.evaluation.records import EvalJob
    from metaspo_dspy.evaluation.run_item import run_item

    program = dspy.Predict(dspy.Signature("question -> answer", "Pick the option letter."))
    examples = [
        dspy.Example(question=f"{engine} {i}: (A) yes (B) no").with_inputs("question") for i in range(2 * n + 20)
    ]
    job = EvalJob("t", program, "Be brief.", "user", examples, lambda e, p, t=None: True)
    names = {id(p): name for name, p in program.named_predictors()}
    for example in examples[:20]:
        run_item(job, names, example, lm, None)
    start = time.process_time()
    for example in examples[20 : 20 + n]:
        run_item(job, names, example, lm, None)
    per_call_ms = (time.process_time() - start) / n * 1000
    profile = cProfile.Profile()
    profile.enable()
    for example in examples[20 + n :]:
        run_item(job, names, example, lm, None)
    profile.disable()
    totals: Counter[str] = Counter()
    for (filename, _, function), (_, _, self_time, _, _) in pstats.Stats(profile).stats.items():
        totals[layer_of(filename, function)] += self_time
    whole = sum(totals.values())
    return {"cpu_ms_per_call": per_call_ms, **{k: per_call_ms * v / whole for k, v in totals.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    disable_dspy_cache()
    n = 100 if args.quick else 400
    with mock_server("--latency", "0") as url:
        import dspy

        stock = dspy.LM("openai/mock", api_base=url, api_key="EMPTY", engine="lm15", cache=False, temperature=0.0)
        results = {
            "litellm": measure(mock_lm(url, "litellm"), "litellm", n),
            "native": measure(mock_lm(url, "native"), "native", n),
            "lm15": measure(stock, "lm15", n),
        }
    layers = [name for name, _ in LAYERS] + ["other (stdlib, pydantic, json, ...)"]
    rows = [[layer, *(results[e].get(layer, 0.0) for e in results)] for layer in layers]
    rows.append(["**total CPU ms per call**", *(results[e]["cpu_ms_per_call"] for e in results)])
    rows.append(["single-process ceiling, calls/s", *(1000 / results[e]["cpu_ms_per_call"] for e in results)])
    header = ["layer (CPU ms per call)", "engine=litellm", "engine=native (default)", "plain dspy.LM(engine='lm15')"]
    table = markdown(rows, header)
    save("layers", {"calls": n, "results": results}, table)


if __name__ == "__main__":
    main()
