"""A full default MetaSPO run (4 review tasks x 50 train examples, the paper's search sizes; run
`metaspo data fetch review` first) against the 100 ms mock model: wall time, calls per phase, ratio to the ideal rate,
peak memory, and the time a sequential loop like the reference's would need (measured on a slice
of sequential calls and extrapolated -- running it would take over half an hour). ``--frugal`` adds
the same run with frugal screening and reports the calls it saved.

    python benchmarks/full_run.py --frugal          # full (several minutes)
    python benchmarks/full_run.py --quick --frugal  # < 1 minute
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from common import DATA_DIR, disable_dspy_cache, markdown, mock_lm, mock_server, save
from throughput import sequential


def run_once(url: str, tasks, args, screening: float | None, log_dir: Path) -> dict:
    from metaspo_dspy import MetaSPO, compile_kwargs

    sizes = dict(num_iterations=1, num_system_candidates=3, num_user_candidates=2) if args.quick else {}
    task_lm, optimizer_lm = mock_lm(url, args.engine, 0.0), mock_lm(url, args.engine, 1.0)
    start = time.perf_counter()
    best = MetaSPO(
        optimizer_lm=optimizer_lm, task_lm=task_lm, num_threads=args.threads, log_dir=log_dir, progress=False,
        screening=screening, **sizes,
    ).compile(**compile_kwargs(tasks))  # fmt: skip
    wall = time.perf_counter() - start
    artifact = best.detailed_results
    phases = [
        {k: p[k] for k in ("phase", "iteration", "task_lm_calls", "optimizer_calls", "seconds", "evaluations_saved")}
        for p in artifact["phases"]
    ]
    return {"wall_s": wall, "phases": phases, "calls": artifact["calls"], "screening": screening}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 tasks x 10 examples, 1 iteration, 16 threads")
    parser.add_argument("--frugal", action="store_true", help="also run with frugal screening (0.2)")
    parser.add_argument("--engine", choices=["litellm", "native"], default="litellm")
    parser.add_argument("--threads", type=int, default=None, help="concurrency (default 32; 16 with --quick)")
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--name", default="full_run", help="results/<name>.json and README section")
    args = parser.parse_args()
    args.threads = args.threads or (16 if args.quick else 32)
    disable_dspy_cache()
    from metaspo_dspy.tasks import load_tasks

    names = ["beauty", "game"] if args.quick else ["beauty", "game", "baby", "office"]
    tasks = load_tasks(
        names, data_dir=DATA_DIR, train_size=10 if args.quick else 50, test_size=20 if args.quick else 500
    )
    gold = {e.question: e.answer for t in tasks for e in t.train + t.test}
    with tempfile.TemporaryDirectory() as tmp:
        gold_file = Path(tmp) / "gold.json"
        gold_file.write_text(json.dumps(gold))
        with mock_server("--latency", str(args.latency), "--gold", str(gold_file)) as url:
            runs = [run_once(url, tasks, args, None, Path(tmp) / "faithful")]
            if args.frugal:
                runs.append(run_once(url, tasks, args, 0.2, Path(tmp) / "frugal"))
            slice_rate = sequential(mock_lm(url, args.engine), 10 if args.quick else 30, "sequential")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ideal = args.threads / args.latency
    rows = []
    for run in runs:
        total = run["calls"]["task_lm"] + run["calls"]["optimizer_lm"]
        run["sequential_estimate_s"] = total / slice_rate
        run["speedup_vs_sequential"] = run["sequential_estimate_s"] / run["wall_s"]
        grid_calls = sum(p["task_lm_calls"] for p in run["phases"])
        grid_seconds = sum(p["seconds"] for p in run["phases"])
        run["ratio_to_ideal"] = grid_calls / grid_seconds / ideal
        saved = sum(p["evaluations_saved"] for p in run["phases"])
        rows.append([
            "frugal (0.2)" if run["screening"] else "faithful", run["calls"]["task_lm"], run["calls"]["optimizer_lm"],
            saved, run["wall_s"], run["ratio_to_ideal"], run["sequential_estimate_s"], run["speedup_vs_sequential"],
        ])  # fmt: skip
    table = markdown(rows, [
        "mode", "task calls", "optimizer calls", "calls saved", "wall s", "rate / ideal",
        "sequential s (extrapolated)", "speed-up",
    ])  # fmt: skip
    phases = markdown(
        [
            [p["phase"], p["iteration"], p["task_lm_calls"], p["optimizer_calls"], p["seconds"]]
            for p in runs[0]["phases"]
        ],
        ["phase", "iteration", "task calls", "optimizer calls", "seconds"],
    )
    table += f"\n\nPeak memory (whole process): {peak_mb:.0f} MB. Per phase (faithful run):\n\n{phases}"
    table = f"engine={args.engine}, {args.threads} threads, {args.latency} s latency.\n\n" + table
    save(
        args.name,
        {"quick": args.quick, "engine": args.engine, "threads": args.threads, "latency_s": args.latency,
         "sequential_calls_per_s": slice_rate, "peak_memory_mb": peak_mb, "runs": runs},
        table,
    )  # fmt: skip


if __name__ == "__main__":
    main()
