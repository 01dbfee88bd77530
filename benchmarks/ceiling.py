"""What sets the call-rate ceiling at concurrency 32: CPU per call *under load*, and one process
versus two.

For each engine, against one 100 ms mock server, our grid evaluator runs 32 concurrent calls
  * in one process with 32 threads (what ``compile`` does), and
  * in two processes with 16 threads each, started together (same total concurrency),
and records calls/s over the ideal, the client's CPU milliseconds per call and the cores it kept
busy (process CPU time / wall time), and the mock server's CPU per call. A client pinned near one
busy core is held by its GIL; a second process shows what the machine's second core could add.

    python benchmarks/ceiling.py            # 2,000 calls per measurement
    python benchmarks/ceiling.py --quick    # 400
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

from common import disable_dspy_cache, markdown, mock_lm, mock_server, save
from throughput import _examples, _program, metric

CONCURRENCY = 32


def _client(url: str, engine: str, threads: int, n: int, tag: str, start, out) -> None:
    """Warm up, wait for the common start, run n calls; report (wall seconds, CPU seconds)."""
    disable_dspy_cache()
    from metaspo_dspy.evaluation.grid import GridEvaluator
    from metaspo_dspy.evaluation.records import EvalJob

    evaluator = GridEvaluator(task_lm=mock_lm(url, engine), num_threads=threads, progress=False)
    examples = _examples(tag, n + threads)
    evaluator.evaluate([EvalJob("t", _program(), "Be brief.", "user", examples[:threads], metric)])
    start.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    evaluator.evaluate([EvalJob("t", _program(), "Be brief.", "user", examples[threads:], metric)])
    out.put((time.perf_counter() - wall, time.process_time() - cpu))


def measure(url: str, server, engine: str, processes: int, n: int, latency: float) -> dict[str, float]:
    context = mp.get_context("spawn")
    start, out = context.Barrier(processes + 1), context.Queue()
    per_process = n // processes
    clients = [
        context.Process(
            target=_client,
            args=(url, engine, CONCURRENCY // processes, per_process, f"{engine}-{processes}-{i}", start, out),
        )
        for i in range(processes)
    ]
    for client in clients:
        client.start()
    start.wait()
    server_cpu = sum(server.cpu_times()[:2])
    reports = [out.get(timeout=600) for _ in clients]
    server_cpu = sum(server.cpu_times()[:2]) - server_cpu
    for client in clients:
        client.join()
    calls, wall = per_process * processes, max(w for w, _ in reports)
    client_cpu = sum(c for _, c in reports)
    return {
        "engine": engine,
        "processes": processes,
        "threads_per_process": CONCURRENCY // processes,
        "calls": calls,
        "calls_per_s": calls / wall,
        "ratio_to_ideal": calls / wall / (CONCURRENCY / latency),
        "client_cpu_ms_per_call": client_cpu / calls * 1000,
        "client_cores_busy": client_cpu / wall,
        "server_cpu_ms_per_call": server_cpu / calls * 1000,
    }


def main() -> None:
    import psutil

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    n = 400 if args.quick else 2000
    results = []
    with mock_server("--latency", str(args.latency)) as url:
        (server,) = [p for p in psutil.Process().children() if "mock_server" in " ".join(p.cmdline())]
        for engine in ("litellm", "native"):
            for processes in (1, 2):
                results.append(measure(url, server, engine, processes, n, args.latency))
                print(results[-1], flush=True)
    keys = ["engine", "processes", "threads_per_process", "calls_per_s", "ratio_to_ideal"]
    keys += ["client_cpu_ms_per_call", "client_cores_busy", "server_cpu_ms_per_call"]
    header = ["engine", "processes", "threads each", "calls/s", "rate / ideal", "client CPU ms/call"]
    header += ["client cores busy", "server CPU ms/call"]
    table = markdown([[r[k] for k in keys] for r in results], header)
    save("ceiling", {"concurrency": CONCURRENCY, "latency_s": args.latency, "rows": results}, table)


if __name__ == "__main__":
    main()
