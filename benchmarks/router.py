"""Scale-out: two model servers behind a LiteLLM Router versus one.

Each mock server serves at most ``--cap`` requests at a time (later ones queue), the way a GPU
server saturates; with ``--latency`` 0.5 s one server tops out at cap / latency calls/s. The same
evaluation grid (the path ``compile`` uses) runs against one server, then against two behind
``metaspo_dspy.lm.router_lm``; the ratio shows how much the second server adds.

    python benchmarks/router.py            # full
    python benchmarks/router.py --quick    # < 1 minute
"""

from __future__ import annotations

import argparse
import contextlib

from common import disable_dspy_cache, markdown, mock_lm, mock_server, save
from throughput import ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--cap", type=int, default=8, help="concurrent requests one server serves")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--strategy", default="least-busy", help="LiteLLM Router routing strategy")
    args = parser.parse_args()
    disable_dspy_cache()
    from metaspo_dspy.lm import LMSettings, router_lm

    n = 96 if args.quick else 320
    server = ("--latency", str(args.latency), "--max-concurrency", str(args.cap))
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(mock_server(*server))
        second = stack.enter_context(mock_server(*server))
        one = ours(mock_lm(first), args.concurrency, n, "one-server")
        deployments = [LMSettings("openai/mock", api_base=url, extra={"cache": False}) for url in (first, second)]
        lm = router_lm("bench", deployments, cache=False, routing_strategy=args.strategy)
        two = ours(lm, args.concurrency, n, "two-servers")
    capacity = args.cap / args.latency
    rows = [
        ["1 server", one, one / capacity],
        [f"2 servers (LiteLLM Router, {args.strategy})", two, two / capacity],
    ]
    table = markdown(rows, ["deployment", "calls/s", "calls/s per server capacity"])
    table += f"\n\nTwo servers / one: **{two / one:.2f}x** (each server: {args.cap} concurrent, {args.latency} s)."
    save(
        "router",
        {"quick": args.quick, "latency_s": args.latency, "cap": args.cap, "concurrency": args.concurrency,
         "one_server_calls_per_s": one, "two_servers_calls_per_s": two, "ratio": two / one},
        table,
    )  # fmt: skip


if __name__ == "__main__":
    main()
