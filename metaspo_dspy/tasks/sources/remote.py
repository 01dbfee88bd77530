"""What ``metaspo data fetch`` downloads: the public originals of the tasks we may not ship.

Every file is pinned to a commit of a public GitHub repository and to the SHA-256 of its bytes
(recorded here when the file was checked), so a fetch gives the same data on every machine or
fails loudly. URLs are ``{base}/{owner}/{repo}/{commit}/{path}`` with ``base`` =
``https://raw.githubusercontent.com`` by default; ``$METASPO_DATA_URL`` (or ``metaspo data fetch
--base-url``) points them at a mirror with the same layout.

=================  ===================================================  ==================  =============
what               original                                             licence             converter
=================  ===================================================  ==================  =============
7 Amazon tasks     Dozi01/MetaSPO ``datasets/amazon/<category>.json``   none stated         reference_json
                   (the paper's data: 2,000 train + 2,000 test each)
liar               microsoft/LMOps ``prompt_optimization/data/liar``    LIAR: none stated   liar_jsonl
                   ``{train,test}.jsonl`` (ProTeGi's binary LIAR)
tweet_eval         cardiffnlp/tweeteval ``datasets/offensive/*.txt``    Twitter terms       tweeteval_txt
ethos              intelligence-csd-auth-gr/Ethos-Hate-Speech-Dataset   GPL-3.0             ethos_csv
                   ``ethos/ethos_data/Ethos_Dataset_Binary.csv``
14 prompt lists    Dozi01/MetaSPO ``prompts/unseen_generalization_      none stated         prompts_json
                   user_prompts/up_for_unseen_gen_<task>.json``
=================  ===================================================  ==================  =============
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote

from metaspo_dspy.tasks.specs import SPECS

BASE_URL_ENV = "METASPO_DATA_URL"
DEFAULT_BASE_URL = "https://raw.githubusercontent.com"

METASPO = ("Dozi01/MetaSPO", "1773f5ada8e4e7f51f0e1ae6a6c8a3a610d4c027")
LMOPS = ("microsoft/LMOps", "89e7307a842d55c08932d95f181e6aa7e323c364")
TWEETEVAL = ("cardiffnlp/tweeteval", "4fbd22cd78421f05b1ecdb4fc5725bc7a7bd8f66")
ETHOS = ("intelligence-csd-auth-gr/Ethos-Hate-Speech-Dataset", "705258e118ce9611ebbd5ab2a4841b0066547293")

#: file key (``owner/repo/path``) -> SHA-256 of the file at its pinned commit
SHA256: dict[str, str] = {
    "Dozi01/MetaSPO/datasets/amazon/baby.json": "c1a032a970dcfb4b9c9603eb4f7c25b82040ed2bff5160a083c540f5861f827b",
    "Dozi01/MetaSPO/datasets/amazon/beauty.json": "c14e56583b317b101e094f6c181e80e5689d8ebeaeeb1f104254b192db167735",
    "Dozi01/MetaSPO/datasets/amazon/electronics.json": (
        "2533e84679d125a3137ade0f5e525cd71ab7683c3b5e871b66c7cec811968c0d"
    ),
    "Dozi01/MetaSPO/datasets/amazon/game.json": "9e71485770a33df665fc5b77a1e9a431bc6db5004176f46fecf674f37a38b303",
    "Dozi01/MetaSPO/datasets/amazon/office.json": "43554109b44964b07b181abea3dc3c1677e789f81203ac94c6f468d1dcd02b5f",
    "Dozi01/MetaSPO/datasets/amazon/pet.json": "14da1fe8141242a5f1f9a3d2ca3c51e44bafa1f8ef30cb0fb3e5db3f18a0a220",
    "Dozi01/MetaSPO/datasets/amazon/sports.json": "e221dbd8576d98299bee9733cffeec5a429a2faf52b22734a0313f9af96d645a",
    "microsoft/LMOps/prompt_optimization/data/liar/train.jsonl": (
        "573ac065e16609a4ab0ae72751b2d3918ec6515dbb9a3adae1f244afe54ca989"
    ),
    "microsoft/LMOps/prompt_optimization/data/liar/test.jsonl": (
        "c4400499e7d71cb57463e3f8d093962deb50a9e8f22fa377cad3c236eacfc8c3"
    ),
    "cardiffnlp/tweeteval/datasets/offensive/train_text.txt": (
        "78a7a32e38b10af7d8970b008bf17f661c8d0a90dad145fa0fa6a944669650db"
    ),
    "cardiffnlp/tweeteval/datasets/offensive/train_labels.txt": (
        "c0b7d6ebdaa4ebcf6fc557ef1e775d92eda160218a0e3b1dd48eb8234dc892a6"
    ),
    "cardiffnlp/tweeteval/datasets/offensive/test_text.txt": (
        "25b08c3333c26190f1023961c4508ec9aab24d4722b1a3ea7a6040724c120547"
    ),
    "cardiffnlp/tweeteval/datasets/offensive/test_labels.txt": (
        "41d05a7aa0b01f5dafab21b95adb4f979cb4226c046ff315702774d10dac1605"
    ),
    "intelligence-csd-auth-gr/Ethos-Hate-Speech-Dataset/ethos/ethos_data/Ethos_Dataset_Binary.csv": (
        "0cd0050c2592afcb5eca5876df485ca15cda9d7d16fe32c269857260fd10d96c"
    ),
}
_PROMPT_SHA256 = {
    "anatomy": "3fabe8ebcffdb35dc169d8f82478da4fdd5ec17b381f1ecb8d6470455ba7ddef",
    "dental": "fc40aacc97c43577c25e60095068c193b4b226e82ea6f232a08d5c18fac9f59d",
    "electronics": "9d1be3660ea0bbfc166858d8e84942336b7cf85cb5c6156d6a5c9a7493a27d20",
    "epistemic": "fef16e7d7a0b53dfc02e29ef34260b97699652c29b0078eaa69fa9bf41f0961d",
    "ethos": "aae0665196656b75b483647d98a1557c4ef837fb4081c3b19b9d4a8188a81450",
    "harmless": "8e4430103e20ee270b5db7daaab194db36a27c76d2e29ab07992924353383b61",
    "natural_questions": "be0906e886c80d9d2ddb0829c094b3f3c198498a385fc2e6deb8f8bfb0c38342",
    "object_counting": "b7ce7242f12375fa20b1dd5a707bc5909a54edb800d613e457972c47cb933a05",
    "pediatrics": "aab5480ec570d767a3888d1d03a5a670c8ce1dab94b0d66d4f3a8d6c9222027f",
    "pet": "31c84ab5d8a174bd8de84c92fcb4a9c869146aa9687526b0ad81d6e126a0768f",
    "reasoning_colored_objects": "c259ad86c0a298057feb15e2e8b45e0f36a9896c2c8fd8384ceadbaa82fb14a8",
    "sports": "a07547dc9d8b98118ff26ba7413be48016768e54ee78e996a10c87c8864686a6",
    "surgery": "691c27523a93fc9180a5d99a7e914c9d784c6ef6973b84fb0003700e4db38d9b",
    "web_qa": "88ceb6befb0e210694f996597fe816d562ce8db9d2bfd4708a7fccd89e0257fc",
}
PROMPTS_PATH = "prompts/unseen_generalization_user_prompts/up_for_unseen_gen_{stem}.json"
SHA256.update({f"{METASPO[0]}/{PROMPTS_PATH.format(stem=s)}": h for s, h in _PROMPT_SHA256.items()})
#: the cache folder of the authors' unseen-task user prompts (as in the reference layout)
PROMPTS_FOLDER = "unseen_user_prompts"


@dataclass(frozen=True)
class RemoteFile:
    """One pinned file of a public GitHub repository."""

    repo: str
    commit: str
    path: str

    @property
    def key(self) -> str:
        """``owner/repo/path``: the key of its checksum in :data:`SHA256`."""
        return f"{self.repo}/{self.path}"

    def url(self, base_url: str) -> str:
        """The file's URL under ``base_url`` (raw.githubusercontent.com's layout)."""
        return f"{base_url.rstrip('/')}/{self.repo}/{self.commit}/{quote(self.path)}"


@dataclass(frozen=True)
class RemoteItem:
    """One file ``metaspo data fetch`` writes into the cache: a task's data (``kind="data"``) or an
    unseen task's stored user prompts (``kind="prompts"``), made by ``converter`` from ``files``
    (role -> remote file)."""

    task: str
    kind: str
    target: str
    converter: str
    files: tuple[tuple[str, RemoteFile], ...]


def _file(source: tuple[str, str], path: str) -> RemoteFile:
    return RemoteFile(source[0], source[1], path)


def _items() -> dict[str, list[RemoteItem]]:
    items: dict[str, list[RemoteItem]] = {}
    for name in ("beauty", "game", "baby", "office", "electronics", "pet", "sports"):
        data = (("data", _file(METASPO, f"datasets/amazon/{name}.json")),)
        items[name] = [RemoteItem(name, "data", f"amazon/{name}.json", "reference_json", data)]
    liar = tuple((s, _file(LMOPS, f"prompt_optimization/data/liar/{s}.jsonl")) for s in ("train", "test"))
    items["liar"] = [RemoteItem("liar", "data", "safety/liar.json", "liar_jsonl", liar)]
    tweets = tuple(
        (f"{s}_{part}", _file(TWEETEVAL, f"datasets/offensive/{s}_{part}.txt"))
        for s in ("train", "test")
        for part in ("text", "labels")
    )
    items["tweet_eval"] = [RemoteItem("tweet_eval", "data", "safety/tweet_eval.json", "tweeteval_txt", tweets)]
    ethos = (("data", _file(ETHOS, "ethos/ethos_data/Ethos_Dataset_Binary.csv")),)
    items["ethos"] = [RemoteItem("ethos", "data", "safety/ethos.json", "ethos_csv", ethos)]
    for spec in SPECS.values():
        if spec.role == "unseen" and spec.unseen_file in _PROMPT_SHA256:
            prompts = (("prompts", _file(METASPO, PROMPTS_PATH.format(stem=spec.unseen_file))),)
            target = f"{PROMPTS_FOLDER}/{spec.unseen_file}.json"
            items.setdefault(spec.name, []).append(RemoteItem(spec.name, "prompts", target, "prompts_json", prompts))
    return items


#: task -> what fetch writes for it (tasks with nothing to fetch are absent)
REMOTE_ITEMS: dict[str, list[RemoteItem]] = _items()


def base_url(given: str | None = None) -> str:
    """``given``, else ``$METASPO_DATA_URL``, else :data:`DEFAULT_BASE_URL`."""
    return given or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
