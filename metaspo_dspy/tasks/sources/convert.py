"""Downloaded originals -> the reference layout (``{"train": [...], "test": [...]}``).

One converter per original format. Each takes the downloaded files by role (``{"train": bytes,
...}``) and returns the splits or, for the authors' user prompts, a list of strings. A file that
does not have the expected shape raises :class:`ConvertError` naming the file's role, the line or
row and what was expected -- nothing is written then. The conversions:

* ``reference_json`` (Amazon: ``Dozi01/MetaSPO datasets/amazon/<category>.json``): already the
  reference layout; rows are checked and kept unchanged (``question``, int ``answer``,
  ``sentiment``), duplicates included, as the reference samples them;
* ``liar_jsonl`` (ProTeGi's binary LIAR, ``{"label": 0|1, "text": ...}`` per line): label 1 (a
  lie) -> ``"yes"``, 0 -> ``"no"``;
* ``tweeteval_txt`` (TweetEval ``offensive``: one text per line, labels in a parallel file):
  label 1 (offensive) -> ``"yes"``;
* ``ethos_csv`` (ETHOS binary, ``comment;isHate``): ``isHate >= 0.5`` -> ``"yes"``; ETHOS has no
  split, so the rows are shuffled with ``random.Random("42:fetch/ethos")`` and cut 40 % train /
  60 % test;
* ``prompts_json``: a JSON list of strings, kept as is.

For the safety sets a question that repeats within a split is kept once, and a test question that
is also a train question is dropped from test, so train and test never share a question.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable, Mapping
from typing import Any

from metaspo_dspy.errors import ConvertError

Rows = list[dict[str, Any]]
Splits = dict[str, Rows]

#: ETHOS has no official split: this share of the shuffled rows is train, the rest test
ETHOS_TRAIN_SHARE = 0.4


def _text(files: Mapping[str, bytes], role: str) -> str:
    try:
        return files[role].decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConvertError(f"{role}: not UTF-8 text ({exc})") from None


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _distinct(splits: Splits) -> Splits:
    """Each question once per split, and no test question that is also a train question."""
    out: Splits = {}
    seen_train: set[str] = set()
    for split in ("train", "test"):
        seen: set[str] = set()
        rows = []
        for row in splits[split]:
            question = row["question"]
            if question in seen or (split == "test" and question in seen_train):
                continue
            seen.add(question)
            rows.append(row)
        out[split] = rows
        if split == "train":
            seen_train = seen
    return out


def reference_json(files: Mapping[str, bytes]) -> Splits:
    """The reference's own file: ``{"train": [...], "test": [...]}`` of rows with a string
    ``question`` and an ``answer``; kept unchanged."""
    try:
        data = json.loads(_text(files, "data"))
    except json.JSONDecodeError as exc:
        raise ConvertError(f"data: not JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in ("train", "test")):
        raise ConvertError("data: expected an object with 'train' and 'test' lists")
    for split in ("train", "test"):
        for i, row in enumerate(data[split]):
            if not isinstance(row, dict) or not isinstance(row.get("question"), str) or "answer" not in row:
                raise ConvertError(f"data: {split} row {i} has no string 'question' and 'answer'")
    return {"train": data["train"], "test": data["test"]}


def liar_jsonl(files: Mapping[str, bytes]) -> Splits:
    """ProTeGi's binary LIAR: one ``{"label": 0|1, "text": str}`` per line, files ``train``/``test``."""
    splits: Splits = {}
    for split in ("train", "test"):
        rows = []
        for number, line in enumerate(_text(files, split).splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConvertError(f"{split}: line {number} is not JSON ({exc})") from None
            if not isinstance(item, dict) or item.get("label") not in (0, 1) or not isinstance(item.get("text"), str):
                raise ConvertError(f"{split}: line {number}: expected {{'label': 0 or 1, 'text': str}}")
            rows.append({"question": item["text"], "answer": _yes_no(item["label"] == 1)})
        splits[split] = rows
    return _distinct(splits)


def tweeteval_txt(files: Mapping[str, bytes]) -> Splits:
    """TweetEval: ``{split}_text`` (one tweet per line) and ``{split}_labels`` (0 or 1 per line)."""
    splits: Splits = {}
    for split in ("train", "test"):
        texts = _text(files, f"{split}_text").splitlines()
        labels = _text(files, f"{split}_labels").splitlines()
        if len(texts) != len(labels):
            raise ConvertError(f"{split}: {len(texts)} texts but {len(labels)} labels")
        rows = []
        for number, (text, label) in enumerate(zip(texts, labels, strict=True), 1):
            if label.strip() not in ("0", "1"):
                raise ConvertError(f"{split}_labels: line {number} is {label!r}, expected 0 or 1")
            if text.strip():
                rows.append({"question": text.strip(), "answer": _yes_no(label.strip() == "1")})
        splits[split] = rows
    return _distinct(splits)


def ethos_csv(files: Mapping[str, bytes]) -> Splits:
    """ETHOS binary: ``comment;isHate`` rows (isHate a share of annotators in [0, 1]), split 40/60
    with a fixed seed (ETHOS has no split)."""
    reader = csv.DictReader(io.StringIO(_text(files, "data")), delimiter=";")
    if not {"comment", "isHate"} <= set(reader.fieldnames or []):
        raise ConvertError(f"data: expected the columns comment;isHate, found {reader.fieldnames}")
    rows = []
    for number, item in enumerate(reader, 2):
        try:
            share = float(item["isHate"])
        except (TypeError, ValueError):
            raise ConvertError(f"data: line {number}: isHate {item['isHate']!r} is not a number") from None
        comment = (item["comment"] or "").strip()
        if comment:
            rows.append({"question": comment, "answer": _yes_no(share >= 0.5)})
    pool = _distinct({"train": rows, "test": []})["train"]
    random.Random("42:fetch/ethos").shuffle(pool)
    cut = round(len(pool) * ETHOS_TRAIN_SHARE)
    return {"train": pool[:cut], "test": pool[cut:]}


def prompts_json(files: Mapping[str, bytes]) -> list[str]:
    """The authors' user prompts of one unseen task: a non-empty JSON list of strings."""
    try:
        data = json.loads(_text(files, "prompts"))
    except json.JSONDecodeError as exc:
        raise ConvertError(f"prompts: not JSON ({exc})") from None
    if not isinstance(data, list) or not data or not all(isinstance(p, str) and p.strip() for p in data):
        raise ConvertError("prompts: expected a non-empty JSON list of non-empty strings")
    return data


CONVERTERS: dict[str, Callable[[Mapping[str, bytes]], Any]] = {
    "reference_json": reference_json,
    "liar_jsonl": liar_jsonl,
    "tweeteval_txt": tweeteval_txt,
    "ethos_csv": ethos_csv,
    "prompts_json": prompts_json,
}


def dump_splits(splits: Splits) -> str:
    """``splits`` as the shipped files are written: valid JSON, one example per line, UTF-8 kept."""
    parts = []
    for split in ("train", "test"):
        rows = ",\n".join(json.dumps(row, ensure_ascii=False) for row in splits[split])
        parts.append(f'"{split}": [\n{rows}\n]')
    return "{\n" + ",\n".join(parts) + "\n}\n"
