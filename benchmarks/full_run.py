"""A full default MetaSPO run (4 review tasks x 50 train examples, the paper's search sizes; run
`metaspo data fetch review` first) against the mock model, side by side with the reference's way of
sending the same requests: one at a time with the plain ``openai`` SDK.

Each mode is one whole run (``MetaSPO.compile``, journaling and fault log included) on a fresh
mock server; the first run records every request body the server received, and the baseline
replays exactly those requests sequentially with ``openai.OpenAI().chat.completions.create``.
Reported per mode: wall time, client CPU (this process plus any worker processes) per call, the
ratio of wall time to the baseline's, calls per phase and the achieved/ideal call rate.

    python benchmarks/full_run.py --latency 0 --name full_run_zero        # the CPU-bound case (~5 min)
    python benchmarks/full_run.py --latency 0.1 --threads 32 --name full_run  # 100 ms (~3 min)
    python benchmarks/full_run.py --quick --latency 0                     # < 1 minute
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from common import DATA_DIR, disable_dspy_cache, markdown, mock_lm, mock_server, save

#: (label, engine, processes): the default configuration, the same with two client processes,
#: and LiteLLM (the default before issue 14).
MODES = [("default", "auto", 1), ("default, 2 processes", "auto", 2), ("litellm", "litellm", 1)]


def run_once(url: str, tasks, args, engine: str, processes: int, log_dir: Path) -> dict:
    from metaspo_dspy import MetaSPO, compile_kwargs
    from metaspo_dspy.evaluation.processes import worker_cpu_seconds

    sizes = dict(num_iterations=1, num_system_candidates=3, num_user_candidates=2) if args.quick else {}
    task_lm, optimizer_lm = mock_lm(url, engine, 0.0), mock_lm(url, engine, 1.0)
    cpu, workers, start = time.process_time(), worker_cpu_seconds(), time.perf_counter()
    best = MetaSPO(
        optimizer_lm=optimizer_lm, task_lm=task_lm, num_threads=args.threads, num_processes=processes,
        log_dir=log_dir, progress=False, **sizes,
    ).compile(**compile_kwargs(tasks))  # fmt: skip
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - cpu + worker_cpu_seconds() - workers
    artifact = best.detailed_results
    phases = [
        {k: p[k] for k in ("phase", "iteration", "task_lm_calls", "optimizer_calls", "seconds")}
        for p in artifact["phases"]
    ]
    calls = artifact["calls"]["task_lm"] + artifact["calls"]["optimizer_lm"]
    return {"wall_s": wall, "client_cpu_s": client_cpu, "calls": calls, "phases": phases, "faults": artifact["faults"]}


def openai_baseline(url: str, bodies: Path) -> dict:
    """The reference's loop: the recorded requests, one at a time, through the ``openai`` SDK."""
    import openai

    requests = [json.loads(line) for line in bodies.read_text().splitlines() if line.strip()]
    client = openai.OpenAI(base_url=url, api_key="EMPTY", max_retries=3, timeout=30)
    cpu, start = time.process_time(), time.perf_counter()
    for body in requests:
        client.chat.completions.create(**body)
    return {"wall_s": time.perf_counter() - start, "client_cpu_s": time.process_time() - cpu, "calls": len(requests)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 tasks x 10 examples, 1 iteration")
    parser.add_argument("--threads", type=int, default=16, help="concurrency over all processes (default 16)")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--modes", default=",".join(str(i) for i in range(len(MODES))), help="indices into MODES")
    parser.add_argument("--name", default="full_run_zero", help="results/<name>.json and README section")
    args = parser.parse_args()
    disable_dspy_cache()
    from metaspo_dspy.tasks import load_tasks

    names = ["beauty", "game"] if args.quick else ["beauty", "game", "baby", "office"]
    tasks = load_tasks(
        names, data_dir=DATA_DIR, train_size=10 if args.quick else 50, test_size=20 if args.quick else 500
    )
    gold = {e.question: e.answer for t in tasks for e in t.train + t.test}
    modes = [MODES[int(i)] for i in args.modes.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        gold_file, bodies = Path(tmp) / "gold.json", Path(tmp) / "bodies.jsonl"
        gold_file.write_text(json.dumps(gold))
        server = ("--latency", str(args.latency), "--gold", str(gold_file))
        for n, (label, engine, processes) in enumerate(modes):
            record = ("--record", str(bodies)) if n == 0 else ()
            with mock_server(*server, *record) as url:
                run = run_once(url, tasks, args, engine, processes, Path(tmp) / f"run{n}")
            runs.append({"mode": label, "engine": engine, "processes": processes, **run})
            print(label, {k: v for k, v in run.items() if k != "phases"}, flush=True)
        with mock_server(*server) as url:
            baseline = openai_baseline(url, bodies)
        print("openai sequential", baseline, flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [["sequential `openai` SDK (the reference's loop)", baseline["calls"], baseline["wall_s"],
             1000 * baseline["client_cpu_s"] / baseline["calls"], 1.0, "-"]]  # fmt: skip
    for run in runs:
        grid_calls = sum(p["task_lm_calls"] for p in run["phases"])
        grid_seconds = sum(p["seconds"] for p in run["phases"])
        run["ratio_to_ideal"] = grid_calls / grid_seconds / (args.threads / args.latency) if args.latency else None
        run["wall_vs_openai"] = run["wall_s"] / baseline["wall_s"]
        rows.append([
            f"metaspo-dspy, {run['mode']}", run["calls"], run["wall_s"], 1000 * run["client_cpu_s"] / run["calls"],
            run["wall_vs_openai"], "-" if run["ratio_to_ideal"] is None else run["ratio_to_ideal"],
        ])  # fmt: skip
    table = markdown(rows, ["client", "requests", "wall s", "client CPU ms/call", "wall / openai loop", "rate / ideal"])
    first = runs[0]["phases"]
    phases = markdown(
        [[p["phase"], p["iteration"], p["task_lm_calls"], p["optimizer_calls"], p["seconds"]] for p in first],
        ["phase", "iteration", "task calls", "optimizer calls", "seconds"],
    )
    head = f"{args.threads} threads over all processes, {args.latency} s mock latency"
    table = f"{head}{', quick sizes' if args.quick else ''}.\n\n{table}\n\nPer phase ({runs[0]['mode']}):\n\n{phases}"
    table += f"\n\nPeak memory of the benchmark process: {peak_mb:.0f} MB."
    save(
        args.name,
        {"quick": args.quick, "threads": args.threads, "latency_s": args.latency, "baseline": baseline,
         "peak_memory_mb": peak_mb, "runs": runs},
        table,
    )  # fmt: skip


if __name__ == "__main__":
    main()
