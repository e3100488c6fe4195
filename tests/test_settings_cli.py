"""Settings from CITYOS_* variables, the `cityos` command line, and the README's settings table."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cityos
import cityos.cli
from cityos.settings import Settings, describe, env_name

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SETTING_NAMES = [f.name for f in dataclasses.fields(Settings)]
ENV_NAMES = [env_name(name) for name in SETTING_NAMES]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
    clean["COLUMNS"] = "100"
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cityos", *args],
        capture_output=True,
        text=True,
        env=clean,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def serve_help() -> str:
    result = run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---------------------------------------------------------------------------------------------
# Settings.from_env
# ---------------------------------------------------------------------------------------------


class TestFromEnv:
    def test_defaults_without_variables(self) -> None:
        assert Settings.from_env({}) == Settings()
        defaults = Settings()
        assert defaults.host == "127.0.0.1"
        assert defaults.port == 1026
        assert defaults.allow_private_networks is False
        assert defaults.core_context == "v1.9"

    def test_every_setting_has_a_cityos_variable(self) -> None:
        assert ["CITYOS_" + name.upper() for name in SETTING_NAMES] == ENV_NAMES
        assert [row[2] for row in describe()] == ENV_NAMES
        for name, flag, env, default, help_text in describe():
            assert flag == "--" + name.replace("_", "-")
            assert env == "CITYOS_" + name.upper()
            assert default == getattr(Settings(), name)
            assert help_text.strip()

    def test_reads_every_variable(self, tmp_path: Path) -> None:
        manifest = tmp_path / "manifest.json"
        environ = {
            "CITYOS_HOST": "0.0.0.0",
            "CITYOS_PORT": "8080",
            "CITYOS_DATABASE": "postgresql://cityos@db.example.org/city",  # several workers need PostgreSQL
            "CITYOS_WORKERS": "3",
            "CITYOS_LOG_LEVEL": "debug",
            "CITYOS_ALLOW_PRIVATE_NETWORKS": "true",
            "CITYOS_CONTEXT_PRELOAD": str(manifest),
            "CITYOS_CONTEXT_FETCH_TIMEOUT": "0.5",
            "CITYOS_CONTEXT_MAX_BYTES": "2048",
            "CITYOS_CONTEXT_CACHE_SIZE": "16",
            "CITYOS_MAX_BODY_BYTES": "4096",
            "CITYOS_MAX_BATCH_SIZE": "50",
            "CITYOS_MAX_PAGE_SIZE": "200",
            "CITYOS_DEFAULT_PAGE_SIZE": "10",
            "CITYOS_CORE_CONTEXT": "v1.8",
        }
        assert set(environ) <= set(ENV_NAMES)
        settings = Settings.from_env(environ)
        assert settings == dataclasses.replace(
            Settings(),
            host="0.0.0.0",
            port=8080,
            database="postgresql://cityos@db.example.org/city",
            workers=3,
            log_level="debug",
            allow_private_networks=True,
            context_preload=str(manifest),
            context_fetch_timeout=0.5,
            context_max_bytes=2048,
            context_cache_size=16,
            max_body_bytes=4096,
            max_batch_size=50,
            max_page_size=200,
            default_page_size=10,
            core_context="v1.8",
        )
        assert isinstance(settings.port, int)
        assert isinstance(settings.context_fetch_timeout, float)

    @pytest.mark.parametrize("name", SETTING_NAMES)
    def test_every_variable_is_read(self, name: str) -> None:
        default = getattr(Settings(), name)
        if isinstance(default, bool):
            raw, expected = ("false", False) if default else ("true", True)
        elif isinstance(default, int | float):
            expected = default + 1
            raw = str(expected)
        elif name == "core_context":
            raw = expected = "v1.8" if default == "v1.9" else "v1.9"
        elif name == "log_level":
            raw = expected = "error"
        elif name == "durability":
            raw = expected = "full"
        elif name == "auth":
            raw = expected = "required"
        elif name == "oidc_issuer":
            raw = expected = "https://id.example.org/realms/city"
        elif name == "audit":
            raw = expected = "off"
        elif name == "open311_api_key":
            raw = expected = "optional"
        elif name == "temporal_retention_types":
            raw = expected = "WeatherObserved=90"
        elif name == "log_format":
            raw = expected = "json"
        elif name == "temporal_downsample":
            raw = expected = "WeatherObserved=90:hour"
        else:
            raw = expected = default + "-changed"
        environ = {env_name(name): raw}
        if name == "workers":  # several workers need PostgreSQL
            environ[env_name("database")] = "postgresql://cityos@db.example.org/city"
        if name == "oidc_issuer":  # an issuer needs the audience its tokens carry
            environ[env_name("oidc_audience")] = "cityos"
        if name == "console_oidc_client_id":  # the console signs in at the issuer
            environ[env_name("oidc_issuer")] = "https://id.example.org/realms/city"
            environ[env_name("oidc_audience")] = "cityos"
        settings = Settings.from_env(environ)
        assert getattr(settings, name) == expected
        assert type(getattr(settings, name)) is type(default)

    def test_reads_os_environ_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CITYOS_PORT", "9090")
        monkeypatch.setenv("CITYOS_LOG_LEVEL", "warning")
        settings = Settings.from_env()
        assert settings.port == 9090
        assert settings.log_level == "warning"

    def test_unrelated_variables_are_ignored(self) -> None:
        assert Settings.from_env({"PORT": "1", "CITYOS": "x", "HOST": "example.org"}) == Settings()

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("1", True),
            ("true", True),
            ("TRUE", True),
            ("yes", True),
            ("on", True),
            (" true ", True),
            ("0", False),
            ("false", False),
            ("no", False),
            ("off", False),
        ],
    )
    def test_boolean_spellings(self, raw: str, expected: bool) -> None:
        assert Settings.from_env({"CITYOS_ALLOW_PRIVATE_NETWORKS": raw}).allow_private_networks is expected

    def test_overrides_beat_variables(self) -> None:
        environ = {"CITYOS_PORT": "8080", "CITYOS_HOST": "0.0.0.0"}
        settings = Settings.from_env(environ, port=9000, host=None)
        assert settings.port == 9000
        assert settings.host == "0.0.0.0"  # a None override means "not given"

    @pytest.mark.parametrize(
        ("name", "raw"),
        [
            ("CITYOS_PORT", "abc"),
            ("CITYOS_PORT", "80.5"),
            ("CITYOS_PORT", ""),
            ("CITYOS_PORT", "0"),
            ("CITYOS_PORT", "65536"),
            ("CITYOS_PORT", "-1"),
            ("CITYOS_WORKERS", "0"),
            ("CITYOS_WORKERS", "many"),
            ("CITYOS_ALLOW_PRIVATE_NETWORKS", "maybe"),
            ("CITYOS_ALLOW_PRIVATE_NETWORKS", "2"),
            ("CITYOS_CORE_CONTEXT", "v2.0"),
            ("CITYOS_CORE_CONTEXT", "1.9"),
            ("CITYOS_LOG_LEVEL", "verbose"),
            ("CITYOS_CONTEXT_FETCH_TIMEOUT", "soon"),
            ("CITYOS_CONTEXT_FETCH_TIMEOUT", "0"),
            ("CITYOS_CONTEXT_FETCH_TIMEOUT", "-1"),
            ("CITYOS_CONTEXT_MAX_BYTES", "0"),
            ("CITYOS_CONTEXT_MAX_BYTES", "1MB"),
            ("CITYOS_CONTEXT_CACHE_SIZE", "-1"),
            ("CITYOS_MAX_BODY_BYTES", "0"),
            ("CITYOS_MAX_BATCH_SIZE", "0"),
            ("CITYOS_MAX_PAGE_SIZE", "0"),
            ("CITYOS_DEFAULT_PAGE_SIZE", "0"),
            ("CITYOS_DEFAULT_PAGE_SIZE", "-5"),
        ],
    )
    def test_bad_values_are_rejected(self, name: str, raw: str) -> None:
        with pytest.raises(ValueError):
            Settings.from_env({name: raw})

    def test_type_errors_name_the_variable(self) -> None:
        with pytest.raises(ValueError, match="CITYOS_PORT"):
            Settings.from_env({"CITYOS_PORT": "abc"})
        with pytest.raises(ValueError, match="CITYOS_ALLOW_PRIVATE_NETWORKS"):
            Settings.from_env({"CITYOS_ALLOW_PRIVATE_NETWORKS": "maybe"})

    def test_default_page_size_within_max_page_size(self) -> None:
        with pytest.raises(ValueError):
            Settings.from_env({"CITYOS_MAX_PAGE_SIZE": "10", "CITYOS_DEFAULT_PAGE_SIZE": "20"})
        assert Settings.from_env({"CITYOS_MAX_PAGE_SIZE": "20", "CITYOS_DEFAULT_PAGE_SIZE": "20"}).max_page_size == 20

    @pytest.mark.parametrize("level", ["DEBUG", "Info", "warning", "error"])
    def test_log_levels_any_case(self, level: str) -> None:
        assert Settings.from_env({"CITYOS_LOG_LEVEL": level}).log_level == level

    def test_settings_are_immutable(self) -> None:
        settings = Settings()
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.port = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


class TestServeHelp:
    def test_lists_every_flag_and_variable(self, serve_help: str) -> None:
        for name, flag, env, _default, _help in describe():
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", serve_help), f"{flag} missing from --help"
            assert env in serve_help, f"{env} missing from --help"
            assert name

    def test_boolean_settings_have_a_negative_flag(self, serve_help: str) -> None:
        assert "--no-allow-private-networks" in serve_help

    def test_shows_the_real_defaults(self, serve_help: str) -> None:
        flat = " ".join(serve_help.split())
        assert "default 1026" in flat
        assert "default 'v1.9'" in flat or "default v1.9" in flat
        # the argparse "(default: None)" suffix would contradict the documented defaults
        assert "default: None" not in flat

    def test_mentions_the_variables(self, serve_help: str) -> None:
        assert "CITYOS_*" in serve_help


class TestCommand:
    def test_version(self) -> None:
        result = run_cli("--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"cityos {cityos.__version__}"
        assert re.fullmatch(r"\d+\.\d+\.\d+\S*", cityos.__version__)

    def test_version_matches_the_package_metadata(self) -> None:
        pyproject = (ROOT / "pyproject.toml").read_text()
        match = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
        assert match is not None
        assert match.group(1) == cityos.__version__

    def test_top_level_help(self) -> None:
        result = run_cli("--help")
        assert result.returncode == 0
        assert "serve" in result.stdout
        assert "--version" in result.stdout

    def test_bad_variable_is_a_usage_error(self) -> None:
        result = run_cli("serve", env={"CITYOS_PORT": "not-a-port"})
        assert result.returncode == 2
        assert "CITYOS_PORT" in result.stderr

    def test_bad_flag_value_is_a_usage_error(self) -> None:
        result = run_cli("serve", "--port", "70000")
        assert result.returncode == 2
        assert "port" in result.stderr
        result = run_cli("serve", "--port", "abc")
        assert result.returncode == 2

    def test_unknown_option(self) -> None:
        result = run_cli("serve", "--no-such-option")
        assert result.returncode == 2
        assert "--no-such-option" in result.stderr


class TestMainInProcess:
    """main() builds Settings with the precedence flag > variable > default and hands them to serve()."""

    @pytest.fixture
    def served(self, monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
        calls: list[Settings] = []

        def fake_serve(settings: Settings) -> int:
            calls.append(settings)
            return 0

        for name in ENV_NAMES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(cityos.cli, "serve", fake_serve)
        return calls

    def test_flags(self, served: list[Settings], tmp_path: Path) -> None:
        argv = [
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "8081",
            "--database",
            str(tmp_path / "c.db"),
            "--allow-private-networks",
            "--context-fetch-timeout",
            "1.5",
            "--core-context",
            "v1.8",
        ]
        assert cityos.cli.main(argv) == 0
        (settings,) = served
        assert settings.host == "0.0.0.0"
        assert settings.port == 8081
        assert settings.database == str(tmp_path / "c.db")
        assert settings.allow_private_networks is True
        assert settings.context_fetch_timeout == 1.5
        assert settings.core_context == "v1.8"
        assert settings.max_page_size == Settings().max_page_size

    def test_flag_beats_variable_beats_default(self, served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CITYOS_PORT", "7000")
        monkeypatch.setenv("CITYOS_ALLOW_PRIVATE_NETWORKS", "true")
        monkeypatch.setenv("CITYOS_MAX_BATCH_SIZE", "5")
        assert cityos.cli.main(["serve", "--port", "7001", "--no-allow-private-networks"]) == 0
        assert cityos.cli.main(["serve"]) == 0
        flagged, from_env = served
        assert flagged.port == 7001
        assert flagged.allow_private_networks is False
        assert flagged.max_batch_size == 5
        assert from_env.port == 7000
        assert from_env.allow_private_networks is True
        assert from_env.host == Settings().host

    def test_no_command_serves(self, served: list[Settings]) -> None:
        assert cityos.cli.main([]) == 0
        assert served == [Settings()]

    def test_invalid_values_exit_with_usage_error(
        self, served: list[Settings], capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as caught:
            cityos.cli.main(["serve", "--workers", "0"])
        assert caught.value.code == 2
        assert "workers" in capsys.readouterr().err
        assert served == []


# ---------------------------------------------------------------------------------------------
# The README documents every setting
# ---------------------------------------------------------------------------------------------


def readme_text() -> str:
    assert README.is_file(), f"{README} does not exist yet: it must document every CITYOS_* variable"
    return README.read_text(encoding="utf-8")


@pytest.mark.parametrize("env", ENV_NAMES)
def test_readme_documents_every_variable(env: str) -> None:
    assert re.search(rf"(?<!\w){re.escape(env)}(?!\w)", readme_text()), f"{env} is not documented in README.md"
