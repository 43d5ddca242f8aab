"""autoresearch.toml parsing: defaults, overrides, and one clear error per bad input."""

from __future__ import annotations

import pytest

from autoresearch.config import Config, load_config, parse_config
from autoresearch.errors import ConfigError


def write(tmp_path, text):
    (tmp_path / "autoresearch.toml").write_text(text)
    return tmp_path


def test_defaults_without_a_file(tmp_path):
    assert load_config(tmp_path) == Config()


def test_file_values_and_cli_overrides(tmp_path):
    repo = write(tmp_path, "[run]\nbudget_seconds = 60\nseed = 7\n[data]\nsequence_len = 256\n")
    config = load_config(repo, {"run.budget_seconds": 5.0, "run.seed": None})
    assert config.run.budget_seconds == 5.0  # the override wins
    assert config.run.seed == 7  # None means "not given"
    assert config.data.sequence_len == 256
    assert isinstance(config.run.budget_seconds, float)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[run\nbudget_seconds = 1", "not valid TOML"),
        ("[runn]\nseed = 1", "unknown section [runn] in autoresearch.toml (did you mean 'run'?)"),
        (
            "[run]\nbudget_second = 1",
            "unknown key 'run.budget_second' in autoresearch.toml (did you mean 'budget_seconds'?)",
        ),
        ('[run]\nbudget_seconds = "fast"', "'run.budget_seconds' must be a number, got str"),
        ("[run]\nseed = 1.5", "'run.seed' must be an integer, got float"),
        ("[run]\nseed = true", "'run.seed' must be an integer, got bool"),
        ("[run]\nbudget_seconds = -5", "'run.budget_seconds' must be positive, got -5"),
        ('[run]\ndevice = "tpu"', "'run.device' must be one of auto, cuda, cpu, mps"),
        ('[tokenizer]\nkind = "words"', "'tokenizer.kind' must be one of bpe, byte"),
        ("[tokenizer]\nvocab_size = 100", "at least 257"),
        ("[eval]\ntokens = 10\n[data]\nsequence_len = 64", "at least one row"),
        ("run = 3", "'run' in autoresearch.toml must be a table"),
        ('[evolve]\nselection = "best"', "'evolve.selection' must be one of rank, none"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_int_accepted_where_float_expected():
    assert parse_config({"run": {"budget_seconds": 60}}).run.budget_seconds == 60.0
