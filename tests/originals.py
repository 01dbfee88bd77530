"""Test-made stand-ins for the originals ``metaspo data fetch`` downloads, in each original's own
format (the reference's Amazon JSON, ProTeGi's LIAR jsonl, TweetEval's parallel text files, the
ETHOS CSV, the authors' prompt lists), a loopback HTTP server that serves them in
raw.githubusercontent.com's layout, and the fetch of them into a cache through the real code."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from metaspo_dspy.tasks.sources.fetch import fetch_data
from metaspo_dspy.tasks.sources.remote import REMOTE_ITEMS, RemoteFile
from metaspo_dspy.tasks.specs import SPECS

AMAZON_TRAIN, AMAZON_TEST = 60, 60
_WORDS = ["great", "awful", "fine", "broken", "lovely", "cheap", "solid", "noisy", "soft", "late"]


def amazon(category: str) -> bytes:
    """A reference-format Amazon file: int ratings, ``sentiment``, one repeated row (the real
    files repeat some reviews too), indented like the reference's."""
    rows = []
    for i in range(AMAZON_TRAIN + AMAZON_TEST - 1):
        rating = 1 + (i * 7 + len(category)) % 5
        word = _WORDS[(i * 3 + len(category)) % len(_WORDS)]
        question = f"title: {category} product {i} is {word}\ntext: I bought the {category} item #{i}; it is {word}."
        sentiment = "positive" if rating >= 4 else "negative" if rating <= 2 else "neutral"
        rows.append({"question": question, "answer": rating, "sentiment": sentiment})
    rows.append(dict(rows[0]))
    data = {"train": rows[:AMAZON_TRAIN], "test": rows[AMAZON_TRAIN:]}
    return json.dumps(data, indent=4, ensure_ascii=False).encode()


def liar(split: str) -> bytes:
    """ProTeGi's binary LIAR lines; train repeats one statement, test repeats a train statement."""
    n = 80 if split == "train" else 40
    lines = []
    for i in range(n):
        text = f"Statement: {split} claim {i} about taxes.\nJob title: Senator\nState: Ohio\nParty: none\nContext: TV"
        lines.append(json.dumps({"label": i % 2, "text": text}))
    lines.append(lines[3] if split == "train" else lines[0].replace("test claim 0", "train claim 5"))
    return ("\n".join(lines) + "\n").encode()


def tweeteval(name: str) -> bytes:
    """TweetEval's offensive files: ``{split}_text`` / ``{split}_labels``, one line each."""
    split, part = name.split("_")
    n = 70 if split == "train" else 40
    if part == "labels":
        return "".join(f"{int(i % 3 == 0)}\n" for i in range(n)).encode()
    return "".join(f"@user {split} tweet {i} says hi {'😀' if i % 5 == 0 else ''} \n" for i in range(n)).encode()


def ethos() -> bytes:
    """The ETHOS binary CSV: ``comment;isHate`` with annotator shares."""
    shares = ["0.0", "0.16666666666666666", "0.5", "0.8333333333333334", "1.0"]
    lines = ["comment;isHate"] + [f"comment number {i} about people;{shares[i % 5]}" for i in range(100)]
    return ("\n".join(lines) + "\n").encode()


def prompts(stem: str) -> bytes:
    """30 user prompts in the authors' style: instruction, question slot, the task's format line."""
    spec = next(s for s in SPECS.values() if s.unseen_file == stem)
    items = [
        f"Instruction {k} for {stem}: think, then answer.<Question>{{question}}</Question>\n{spec.format_line}"
        for k in range(30)
    ]
    return json.dumps(items, indent=4).encode()


def original(remote: RemoteFile) -> bytes:
    """The test-made bytes standing in for ``remote``."""
    name = Path(remote.path).stem
    if remote.path.startswith("datasets/amazon/"):
        return amazon(name)
    if "/liar/" in remote.path:
        return liar(name)
    if "/offensive/" in remote.path:
        return tweeteval(name)
    if remote.path.endswith("Ethos_Dataset_Binary.csv"):
        return ethos()
    return prompts(name.removeprefix("up_for_unseen_gen_"))


def write_mirror(root: Path) -> dict[str, str]:
    """Every remote file under ``root`` in raw.githubusercontent.com's layout; their SHA-256s."""
    sums = {}
    for items in REMOTE_ITEMS.values():
        for item in items:
            for _, remote in item.files:
                body = original(remote)
                path = root / remote.repo / remote.commit / remote.path
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)
                sums[remote.key] = hashlib.sha256(body).hexdigest()
    return sums


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serving(root: Path) -> Iterator[str]:
    """A loopback HTTP server for the files under ``root``; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def build_cache(workdir: Path, targets: tuple[str, ...] = ("all",)) -> Path:
    """Serve the test-made originals and fetch ``targets`` through the real fetch code into
    ``workdir / "cache"``; returns the cache folder."""
    sums = write_mirror(workdir / "mirror")
    with serving(workdir / "mirror") as url:
        fetch_data(targets, cache=workdir / "cache", base=url, checksums=sums)
    return workdir / "cache"
