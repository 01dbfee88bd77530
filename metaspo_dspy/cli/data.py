"""``metaspo data fetch``: download the task data that may not ship with the package.

    metaspo data fetch review          # the 7 Amazon tasks and their unseen user prompts
    metaspo data fetch ethos liar      # single tasks
    metaspo data fetch all             # everything not bundled (about 20 MB)

Progress lines and the summary go to stderr; the cache folder goes to stdout. A failed download,
a checksum mismatch or a file that does not convert is one ``error:`` line and exit code 2 (the
items fetched before it stay in the cache; nothing partial is written). ``metaspo tasks`` shows
what is on this machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metaspo_dspy.cli.common import say

_EPILOG = """\
targets: a task (beauty, ethos, ...), a domain (medical, review, reasoning, safety, grounding) or
'all' (= 'global', the cross-domain config's tasks and navigate). Bundled tasks need nothing;
unseen tasks also get the authors' stored user prompts.

The cache: --cache-dir, else $METASPO_CACHE_DIR, else ~/.cache/metaspo-dspy/data. Downloads come
from the public originals pinned to a commit (raw.githubusercontent.com) and are checked against
the SHA-256 recorded in the package; --base-url (or $METASPO_DATA_URL) names a mirror with the same
layout ({base}/{owner}/{repo}/{commit}/{path}). Licences: see `metaspo tasks` and each original.
"""


def add_parser(subparsers) -> None:
    """Register ``metaspo data`` (with its ``fetch`` subcommand)."""
    data = subparsers.add_parser("data", help="download the task data that is not bundled (metaspo data fetch ...)")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    fetch = commands.add_parser(
        "fetch",
        help="download tasks into the user cache, verify checksums, convert to the reference layout",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("targets", nargs="*", default=["all"], metavar="TARGET", help="task, domain or all (default)")
    fetch.add_argument("--cache-dir", type=Path, default=None, help="where to write (default: the user cache)")
    fetch.add_argument("--base-url", default=None, help="download base URL (default: $METASPO_DATA_URL or GitHub)")
    fetch.add_argument("--force", action="store_true", help="download again what is already in the cache")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds per download (default 60)")
    fetch.set_defaults(handler=run_fetch)


def run_fetch(args: argparse.Namespace) -> int:
    from metaspo_dspy.tasks.provenance import data_info
    from metaspo_dspy.tasks.sources.fetch import fetch_data
    from metaspo_dspy.tasks.sources.local import cache_dir

    root = args.cache_dir.expanduser() if args.cache_dir is not None else cache_dir()

    def report(record) -> None:
        if record.status == "bundled":
            say(f"bundled  {record.task}: {record.detail}, nothing to fetch")
            return
        what = "data" if record.kind == "data" else "authors' user prompts"
        licence = f"; licence: {data_info(record.task).licence}" if record.kind == "data" else ""
        say(f"{record.status:8} {record.task} {what}: {record.detail} ({record.path}{licence})")

    records = fetch_data(
        args.targets, cache=root, base=args.base_url, force=args.force, timeout=args.timeout, on_record=report
    )
    counts = {s: sum(r.status == s for r in records) for s in ("fetched", "present", "bundled")}
    say(
        f"{counts['fetched']} fetched, {counts['present']} already in the cache, {counts['bundled']} bundled "
        f"(nothing to fetch); cache: {root}"
    )
    print(root)
    return 0
