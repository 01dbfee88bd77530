"""Run configuration: shipped configs load; every bad config is one clear ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaspo_dspy.config import CONFIG_DIR, ConfigError, LMConfig, RunConfig, load_config
from metaspo_dspy.tasks import SOURCE_TASKS, UNSEEN_TASKS

DOMAIN_FILES = ("medical", "review", "reasoning", "safety", "grounding", "generated")


def test_defaults_are_the_papers():
    config = load_config(CONFIG_DIR / "base.yaml", require_tasks=False)
    assert config == RunConfig(sources=config.sources)
    assert (config.method, config.seed, config.num_threads) == ("metaspo", 42, 16)
    assert (config.search.num_iterations, config.search.num_system_candidates) == (3, 9)
    assert (config.search.num_user_candidates, config.search.user_top_k) == (3, 3)
    assert (config.data.train_size, config.data.test_size, config.data.prompt_format) == (50, 500, "dspy")
    assert (config.meta_test.num_unseen_user_prompts, config.meta_test.tta_iterations) == (10, 6)
    assert config.initial_system_prompt == "You are a helpful assistant."
    assert config.task_lm.temperature == 0.0
    assert (config.optimizer_lm.model, config.optimizer_lm.temperature) == ("openai/gpt-4o-mini", 1.0)


@pytest.mark.parametrize("domain", DOMAIN_FILES)
def test_shipped_domain_configs_load(domain):
    config = load_config(CONFIG_DIR / "base.yaml", CONFIG_DIR / f"{domain}.yaml")
    assert config.tasks.source == SOURCE_TASKS[domain]
    assert config.tasks.unseen == UNSEEN_TASKS[domain]
    assert config.sources == (str(CONFIG_DIR / "base.yaml"), str(CONFIG_DIR / f"{domain}.yaml"))


def test_every_shipped_file_loads_and_global_has_the_paper_counts():
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        load_config(path, require_tasks=False)
    config = load_config("base", "global")  # bare names resolve to the shipped files
    assert (len(config.tasks.source), len(config.tasks.unseen)) == (16, 14)


def test_later_files_and_overrides_win(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("search:\n  num_iterations: 5\noptimizer_lm:\n  model: openai/gpt-4o\n", encoding="utf-8")
    config = load_config(
        "base", "review", extra, overrides=["seed=7", "tasks.unseen=pet,anthropic_harmless", "task_lm.temperature=0"]
    )
    assert config.search.num_iterations == 5 and config.search.num_system_candidates == 9
    assert config.optimizer_lm == LMConfig(model="openai/gpt-4o", temperature=1.0, api_key_env="OPENAI_API_KEY")
    assert config.seed == 7 and config.tasks.unseen == ("pet", "antropic_harmless")
    assert isinstance(config.task_lm.temperature, float)
    mapping = load_config("review", overrides={"data.prompt_format": "reference"})
    assert mapping.data.prompt_format == "reference" and mapping.sources[-1] == "<overrides>"


def test_config_is_frozen():
    config = load_config("review")
    with pytest.raises(AttributeError):
        config.seed = 1  # type: ignore[misc]


BAD = [
    ("malformed YAML", "search:\n  num_iterations: [3\n", ["malformed YAML", "line"]),
    ("not a mapping", "- a\n- b\n", ["top level must be a mapping"]),
    (
        "unknown key",
        "search:\n  num_iteration: 3\n",
        ["'search.num_iteration'", "did you mean 'search.num_iterations'"],
    ),
    ("unknown top key", "num_iterations: 3\n", ["'num_iterations'", "did you mean 'search.num_iterations'"]),
    ("unknown section", "serch:\n  num_iterations: 3\n", ["'serch'", "did you mean 'search'"]),
    (
        "unknown task",
        "tasks:\n  source: [beauty, gaem]\n",
        ["'tasks.source'", "unknown task 'gaem'", "did you mean 'game'"],
    ),
    ("wrong type", "search:\n  num_iterations: three\n", ["'search.num_iterations'", "must be an integer", "'three'"]),
    ("bool is not int", "seed: true\n", ["'seed'", "must be an integer"]),
    ("wrong list type", "tasks:\n  source: beauty\n", ["'tasks.source'", "must be a list of strings"]),
    ("section not mapping", "search: 3\n", ["'search'", "must be a mapping"]),
    ("empty task list", "tasks:\n  source: []\n", ["'tasks.source'", "empty task list"]),
    (
        "bad choice",
        "data:\n  prompt_format: refrence\n",
        ["'data.prompt_format'", "dspy, reference", "did you mean 'reference'"],
    ),
    ("negative size", "data:\n  train_size: 0\n", ["'data.train_size'", ">= 1"]),
    ("duplicate task", "tasks:\n  source: [beauty, beauty]\n", ["listed twice"]),
    ("api key", "task_lm:\n  api_key: sk-123\n", ["'task_lm.api_key'", "never store API keys", "task_lm.api_key_env"]),
]


@pytest.mark.parametrize(("case", "text", "needles"), BAD, ids=[c for c, _, _ in BAD])
def test_bad_configs_fail_with_one_clear_message(tmp_path, case, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config("base", "review", path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["search.num_iterations=x"], "'search.num_iterations' must be an integer"),
        (["search.nope=1"], "unknown key 'search.nope'"),
        (["seed"], "must look like key=value"),
        ({"tasks.source": ["nosuchtask"]}, "unknown task 'nosuchtask'"),
    ],
)
def test_bad_overrides_name_the_overrides(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config("base", "review", overrides=overrides)
    assert "<overrides>" in str(info.value) and needle in str(info.value)


def test_missing_tasks_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"'tasks\.source' is missing"):
        load_config("base")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_to_dict_round_trips_through_yaml(tmp_path):
    import yaml

    config = load_config("base", "safety")
    data = config.to_dict()
    data.pop("sources")
    path = Path(tmp_path / "saved.yaml")
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert load_config(path).to_dict() | {"sources": None} == data | {"sources": None}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "search:\n  num_iterations: 1\nseed: 3\nsearch:\n  user_top_k: 2\n",
            "key 'search' at line 4 (first given at line 1)",
        ),
        (
            "search:\n  num_iterations: 1\n  num_iterations: 2\n",
            "key 'num_iterations' at line 3 (first given at line 2)",
        ),
        ("tasks: {source: [beauty], source: [game]}\n", "key 'source' at line 1 (first given at line 1)"),
    ],
)
def test_a_duplicate_key_names_the_key_and_the_line(tmp_path, text, needle):
    path = tmp_path / "dup.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config("base", "review", path)
    assert str(path) in str(info.value) and "duplicate " + needle in str(info.value)


def test_merge_keys_still_override(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("common: &c {num_iterations: 1, user_top_k: 2}\n", encoding="utf-8")
    assert "unknown key 'common'" in _error(lambda: load_config("review", path))
    path.write_text("search:\n  <<: {num_iterations: 1, user_top_k: 2}\n  num_iterations: 4\n", encoding="utf-8")
    config = load_config("base", "review", path)
    assert (config.search.num_iterations, config.search.user_top_k) == (4, 2)


def _error(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


def test_encodings_utf8_with_bom_is_read_utf16_and_latin1_are_named(tmp_path):
    path = tmp_path / "enc.yaml"
    path.write_bytes("\ufeffsearch:\n  num_iterations: 5\n# café\n".encode())
    assert load_config("base", "review", path).search.num_iterations == 5
    path.write_bytes("search:\n  num_iterations: 5\n".encode("utf-16"))
    assert f"{path} is not UTF-8 text: it is UTF-16 encoded" in _error(lambda: load_config("review", path))
    path.write_bytes("initial_system_prompt: Vous êtes utile\n".encode("latin-1"))
    assert "byte 0xea at offset 28 is not valid UTF-8" in _error(lambda: load_config("review", path))


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("search.screening=1.5", "'search.screening' must be in (0, 1), got 1.5"),
        ("search.screening=0", "'search.screening' must be in (0, 1)"),
        ("search.screening_keep=0", "'search.screening_keep' must be in (0, 1]"),
        ("budget.max_failure_share=1.01", "'budget.max_failure_share' must be in [0, 1]"),
        ("budget.max_cost=0", "'budget.max_cost' must be > 0"),
        ("budget.max_lm_calls=0", "'budget.max_lm_calls' must be >= 1"),
        ("search.num_iterations=0", "'search.num_iterations' must be >= 1"),
        ("search.num_system_candidates=0", "'search.num_system_candidates' must be >= 1"),
        ("num_threads=0", "'num_threads' must be >= 1"),
        ("optimizer_lm.timeout=0", "'optimizer_lm.timeout' must be > 0"),
    ],
)
def test_values_out_of_range_are_refused(override, needle):
    assert needle in _error(lambda: load_config("base", "review", overrides=[override]))


def test_values_at_the_edges_of_their_ranges_are_accepted():
    edges = ["search.screening=0.99", "search.screening_keep=1", "budget.max_failure_share=0", "budget.max_cost=0.01"]
    config = load_config("base", "review", overrides=edges)
    assert (config.search.screening, config.search.screening_keep) == (0.99, 1.0)
    assert (config.budget.max_failure_share, config.budget.max_cost) == (0.0, 0.01)


def test_repeated_config_and_set_options_accumulate(tmp_path):
    from metaspo_dspy.cli import build_parser
    from metaspo_dspy.cli.common import config_from_args

    extra = tmp_path / "extra.yaml"
    extra.write_text("search:\n  num_iterations: 2\n", encoding="utf-8")
    argv = ["train", "-c", "review", "-c", str(extra), "--set", "task_lm.api_base=http://localhost:8000/v1"]
    argv += ["--set", "task_lm.model=openai/m", "seed=7", "--set", "seed=8"]
    args = build_parser().parse_args(argv)
    assert args.config == ["review", str(extra)]
    config = config_from_args(args)
    assert config.task_lm.api_base == "http://localhost:8000/v1" and config.task_lm.model == "openai/m"
    assert config.seed == 8 and config.search.num_iterations == 2 and config.tasks.source[0] == "beauty"


def test_typed_values_are_never_parsed_and_keep_any_unicode():
    """``values=`` (the CLI's flags, --resume's recorded settings) reach the config as given: characters outside
    the BMP stay themselves (no ``\\ud83d`` escape turned into lone surrogates by YAML), text that YAML would
    read as a number or a date stays text, and they apply after ``overrides``."""
    prompt, data_dir = "Be brief 😀 𝒜 ⟨x⟩.", "/tmp/data😀/𝒜"
    config = load_config(
        "medical",
        overrides=["data.data_dir=elsewhere", "seed=3"],
        values={"initial_system_prompt": prompt, "data.data_dir": data_dir, "task_lm.model": "1e3"},
    )
    assert config.initial_system_prompt == prompt and config.data.data_dir == data_dir
    assert config.task_lm.model == "1e3" and config.seed == 3
    assert config.sources[-1] == "<overrides>"
    with pytest.raises(ConfigError, match=r"^run/config\.json: key 'seed' must be an integer"):
        load_config("medical", values={"seed": "x"}, values_origin="run/config.json")
    # YAML reads an escaped pair as two surrogates: they are joined into the character they stand for
    escaped = load_config("medical", overrides=['initial_system_prompt="Hi \\ud83d\\ude00"'])
    assert escaped.initial_system_prompt == "Hi 😀"


@pytest.mark.parametrize(
    ("overrides", "values", "needle"),
    [
        (["task_lm=3"], None, r"key 'task_lm' must be a mapping of settings .*task_lm\.model=\.\.\."),
        (["task_lm=3", "task_lm.model=x"], None, r"key 'task_lm' is given the value 3 and also 'task_lm\.model'"),
        (["task_lm.model=x", "task_lm=3"], None, r"key 'task_lm' must be a mapping"),
        (["task_lm=3"], {"task_lm.model": "x"}, r"key 'task_lm' must be a mapping"),
        (["search=1"], None, r"key 'search' must be a mapping of settings"),
        (["data.train_size=[1]"], None, r"key 'data\.train_size' must be an integer, got \[1\]"),
        (["tasks.source.x=1"], None, r"key 'tasks\.source' must be a list of strings"),
        (["method.x=1"], None, r"key 'method' must be a string"),
        (None, {"seed": {"a": 1}}, r"unknown key 'seed\.a'|key 'seed' must be an integer"),
        (None, {"data.data_dir": "bad\udcff"}, r"key 'data\.data_dir' holds text that is not valid Unicode"),
        (None, {"initial_system_prompt": "\x00"}, r"key 'initial_system_prompt' has no visible text"),
        (None, {"initial_system_prompt": " \n"}, r"key 'initial_system_prompt' is empty"),
    ],
)
def test_a_section_given_a_scalar_and_other_mixups_are_config_errors(overrides, values, needle):
    """No TypeError (a "(a bug)" line in the CLI) for a section given a value, or a value given keys."""
    with pytest.raises(ConfigError, match=needle):
        load_config("medical", overrides=overrides, values=values)
