"""Settings declared once (api/settings.py, ranker/config.py): every declared scorer and server
setting is parsed from the environment, reaches the typed configuration, is checked by its rule with
a one-line error naming it, and appears in `ranker serve --help` and the docs' settings table; the
scorer reads no RANKER_* variable that is not declared."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api.app import DEFAULTS, check_config, config_from_env
from api.settings import ALL_SETTINGS, SCORER_SETTINGS, SERVER_SETTINGS, ServerConfig, settings_markdown
from ranker.config import PLATFORM_SETTINGS, ConfigError, Settings
from tests.conftest import REPO_ROOT

# A valid value other than the default, for each text setting (a new one must be added here).
TEXT_SAMPLES = {
    "RANKER_API_TOKEN": "s3cret",
    "RANKER_SURFACES": "recs",
    "RANKER_VARIANTS": '{"search": [{"name": "control", "model": "production", "weight": 0.5}, '
    '{"name": "treatment", "model": "staging", "weight": 0.5}]}',
    "RANKER_VARIANTS_FILE": "",  # checked separately: it must name a readable file
    "RANKER_AB_SALT": "ab-2026-12",
    "RANKER_SERVED_LOG_URI": "file:///tmp/served",
    "RANKER_EXPLORE_SLOTS": "4,8",
    "RANKER_BIND": "127.0.0.1:9999",
    "RANKER_ACCESS_LOG": "-",
    "RANKER_LOG_LEVEL": "warning",
}
# Read by one command each and documented with it, not by the scorer.
NOT_SCORER_SETTINGS = {"RANKER_SHARED_DATA", "RANKER_PUSHGATEWAY_URL"}


def _other_value(setting) -> str:
    if setting.kind is bool:
        return "0" if setting.default else "1"
    if setting.kind is int:
        return str(setting.default + 3)
    if setting.kind is float:
        return "0.5" if setting.rule == "between 0 and 1" else str(setting.default + 1.5)
    return TEXT_SAMPLES[setting.env]


def _breaking_value(setting) -> str:
    """A value that parses but breaks the setting's rule."""
    if setting.rule.startswith(">= 1"):
        return "0"
    if setting.rule.startswith("> 0"):
        return "0"
    if setting.rule.startswith(">= 0"):
        return "-1"
    if setting.rule == "between 0 and 1":
        return "1.5"
    if setting.rule.startswith("one of"):
        return "loudest"
    if setting.rule.startswith("distinct comma-separated positions"):
        return "4,4"
    raise AssertionError(f"no breaking value known for {setting.env}'s rule {setting.rule!r}: add one here")


def test_defaults_and_environment_parsing_come_from_the_declarations():
    assert DEFAULTS == {s.key: s.default for s in SCORER_SETTINGS}
    assert len({s.env for s in ALL_SETTINGS}) == len(ALL_SETTINGS), "a setting is declared twice"
    assert config_from_env({}) == {}


@pytest.mark.parametrize(
    "setting", [s for s in SCORER_SETTINGS if s.env != "RANKER_VARIANTS_FILE"], ids=lambda s: s.env
)
def test_every_scorer_setting_reaches_the_typed_config(setting):
    """Changing the variable changes the validated ScorerConfig (nothing is declared and then ignored)."""
    baseline = check_config({})
    changed = check_config({setting.env: _other_value(setting)})
    assert repr(changed) != repr(baseline), f"{setting.env} does not reach ScorerConfig"


def test_the_variants_file_setting_is_read(tmp_path):
    path = tmp_path / "variants.json"
    path.write_text(TEXT_SAMPLES["RANKER_VARIANTS"])
    assert repr(check_config({"RANKER_VARIANTS_FILE": str(path)})) != repr(check_config({}))


@pytest.mark.parametrize(
    "setting", [s for s in SCORER_SETTINGS + SERVER_SETTINGS if s.kind is not str], ids=lambda s: s.env
)
def test_a_value_that_does_not_parse_names_the_variable(setting):
    with pytest.raises(ConfigError, match=rf"^{setting.env}='many' is not a valid {setting.kind.__name__}$"):
        (check_config if setting in SCORER_SETTINGS else ServerConfig.from_env)({setting.env: "many"})


@pytest.mark.parametrize(
    "setting", [s for s in SCORER_SETTINGS + SERVER_SETTINGS if s.check is not None], ids=lambda s: s.env
)
def test_a_value_that_breaks_the_rule_names_the_variable_and_the_rule(setting):
    with pytest.raises(ConfigError, match=re.escape(f"{setting.env} must be {setting.rule}")):
        (check_config if setting in SCORER_SETTINGS else ServerConfig.from_env)({setting.env: _breaking_value(setting)})


@pytest.mark.parametrize("setting", SERVER_SETTINGS, ids=lambda s: s.env)
def test_every_server_setting_reaches_the_gunicorn_config(setting):
    assert ServerConfig.from_env({setting.env: _other_value(setting)}) != ServerConfig.from_env({})


def test_platform_settings_defaults_come_from_the_declarations(tmp_path):
    settings = Settings.from_env({"RANKER_HOME": str(tmp_path)})
    declared = {s.env: s.default for s in PLATFORM_SETTINGS}
    assert settings.online_store == declared["RANKER_ONLINE_STORE"]
    assert settings.redis_url == declared["REDIS_URL"]
    assert settings.registry_uri == declared["RANKER_REGISTRY_URI"]
    with pytest.raises(ConfigError, match="RANKER_ONLINE_STORE"):
        Settings.from_env({"RANKER_HOME": str(tmp_path), "RANKER_ONLINE_STORE": "memcached"})


def test_the_scorer_reads_no_undeclared_variable():
    declared = {s.env for s in ALL_SETTINGS}
    sources = [
        *sorted((REPO_ROOT / "api").glob("*.py")),
        REPO_ROOT / "pipelines" / "cmd_serve.py",
        REPO_ROOT / "ranker" / "config.py",
    ]
    used = set()
    for path in sources:
        used |= set(re.findall(r'"((?:RANKER|REDIS)_[A-Z0-9_]+)"', Path(path).read_text()))
    assert used - declared - NOT_SCORER_SETTINGS == set()


def test_help_and_docs_list_every_setting():
    from click.testing import CliRunner

    from pipelines import cli

    cli._register()
    help_text = CliRunner().invoke(cli.cli, ["serve", "--help"]).output
    page = settings_markdown()
    for setting in ALL_SETTINGS:
        assert f"| `{setting.env}` |" in page, setting.env
        if setting in SCORER_SETTINGS and not setting.internal:
            assert setting.env in help_text, setting.env
    assert settings_markdown() == page, "the generated page must be deterministic"
