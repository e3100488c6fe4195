"""The TOML configuration file (--config, CITYOS_CONFIG): every setting, precedence flags >
environment > file > defaults, and `cityos config show` with secrets masked (docs/operations.md)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backends import cli_env
from cityos.settings import Settings, read_config, resolve


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    return repr(value)


def test_the_file_carries_every_setting(tmp_path: Path) -> None:
    changed: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, bool):
            changed[f.name] = not default
        elif isinstance(default, int):
            changed[f.name] = default + 1
        elif isinstance(default, float):
            changed[f.name] = default + 0.5
        else:
            changed[f.name] = default + "x" if default else "x"
    path = tmp_path / "all.toml"
    path.write_text("".join(f"{name} = {toml_value(v)}\n" for name, v in changed.items()))
    assert read_config(str(path)) == changed  # read, not validated: every key and type is accepted


def test_precedence_flags_environment_file_defaults(tmp_path: Path) -> None:
    path = tmp_path / "city.toml"
    path.write_text('port = 2001\nmax-page-size = 500\nlog_level = "warning"\nrate_limit = 3\n')
    env = {"CITYOS_CONFIG": str(path), "CITYOS_PORT": "2002", "CITYOS_LOG_LEVEL": "error"}
    found = resolve(env, None, {"port": 2003})
    assert found["port"] == (2003, "flag")
    assert found["log_level"] == ("error", "env CITYOS_LOG_LEVEL")
    assert found["max_page_size"] == (500, f"file {path}")
    assert found["rate_limit"] == (3.0, f"file {path}")  # an integer for a float setting
    assert found["default_page_size"] == (20, "default")
    settings = Settings.from_env(env, port=2003)
    assert (settings.port, settings.log_level, settings.max_page_size) == (2003, "error", 500)
    other = tmp_path / "other.toml"
    other.write_text("max_page_size = 700\n")
    assert Settings.from_env(env, config=str(other)).max_page_size == 700  # --config over CITYOS_CONFIG


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot = 1\n", "unknown setting 'prot'"),
        ('port = "1026"\n', "port must be a int"),
        ("access_log = 1\n", "access_log must be a bool"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_a_wrong_file_is_refused_with_its_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        Settings.from_env({}, config=str(path))
    with pytest.raises(ValueError, match="cannot read the configuration file"):
        Settings.from_env({}, config=str(tmp_path / "missing.toml"))


def run_cityos(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cityos", *args], env=cli_env(**env), capture_output=True, text=True, timeout=60
    )


def test_config_show_names_sources_and_masks_secrets(tmp_path: Path) -> None:
    path = tmp_path / "city.toml"
    path.write_text(
        'database = "postgresql://cityos:s3cret-pw@db.example:5432/city"\n'
        'iot_mqtt_url = "mqtts://agent:mqtt-pw@broker:8883"\nworkers = 2\n'
    )
    done = run_cityos("config", "show", "--json", "--port", "8080", CITYOS_CONFIG=str(path), CITYOS_AUDIT="off")
    assert done.returncode == 0, done.stderr
    assert "s3cret-pw" not in done.stdout and "mqtt-pw" not in done.stdout
    shown = json.loads(done.stdout)
    assert shown["database"] == {"value": "postgresql://cityos:***@db.example:5432/city", "source": f"file {path}"}
    assert shown["iot_mqtt_url"]["value"] == "mqtts://agent:***@broker:8883"
    assert shown["port"] == {"value": 8080, "source": "flag"}
    assert shown["audit"] == {"value": "off", "source": "env CITYOS_AUDIT"}
    assert shown["workers"]["value"] == 2 and shown["host"] == {"value": "127.0.0.1", "source": "default"}
    assert set(shown) == {f.name for f in dataclasses.fields(Settings)}
    text = run_cityos("config", "show", "--config", str(path))
    assert text.returncode == 0 and "s3cret-pw" not in text.stdout
    assert "(file " in text.stdout and "(default)" in text.stdout
    invalid = run_cityos("config", "show", "--workers", "0")
    assert invalid.returncode == 1 and "workers must be at least 1" in invalid.stderr


def test_the_documented_file_is_valid(tmp_path: Path) -> None:
    """The example of docs/operations.md, "Configuration file", is read as it is shown."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "city.toml"
    path.write_text(block)
    settings = Settings.from_env({}, config=str(path))
    assert (settings.workers, settings.log_format, settings.metrics_port) == (4, "json", 9464)
    assert settings.access_log and settings.auth == "required"


def test_data_commands_take_the_database_from_the_file(tmp_path: Path, db_url: str) -> None:
    """`cityos db`, `demo`, `export`, `keys`, `backup`: --database > CITYOS_DATABASE > the file
    (--config, else CITYOS_CONFIG) > the default, as `cityos serve` resolves it."""
    path = tmp_path / "city.toml"
    path.write_text(f"database = {json.dumps(db_url)}\nport = 1999\n")
    elsewhere = str(tmp_path / "elsewhere.db")  # a SQLite file that must stay untouched
    loaded = run_cityos("demo", "--notify-wait", "0", CITYOS_CONFIG=str(path))
    assert loaded.returncode == 0, loaded.stderr
    upgraded = run_cityos("db", "upgrade", CITYOS_CONFIG=str(path))
    assert upgraded.returncode == 0, upgraded.stderr
    status = run_cityos("db", "status", "--config", str(path))
    assert status.returncode == 0, status.stderr + status.stdout
    key = run_cityos("keys", "create", "--name", "ops", "--role", "admin", CITYOS_CONFIG=str(path))
    assert key.returncode == 0, key.stderr
    listed = run_cityos("keys", "list", "--config", str(path))
    assert listed.returncode == 0 and "ops" in listed.stdout, listed.stderr
    exported = run_cityos("export", "--list", CITYOS_CONFIG=str(path))
    assert exported.returncode == 0 and exported.stdout.strip(), exported.stderr
    # the environment beats the file, a flag beats both
    missing = run_cityos("db", "status", CITYOS_CONFIG=str(path), CITYOS_DATABASE=elsewhere)
    assert missing.returncode == 1 and "elsewhere.db" in missing.stdout + missing.stderr
    flagged = run_cityos("keys", "list", "--database", db_url, CITYOS_CONFIG=str(path), CITYOS_DATABASE=elsewhere)
    assert flagged.returncode == 0 and "ops" in flagged.stdout, flagged.stderr
    assert not Path(elsewhere).exists()
    copy = str(tmp_path / ("copy.dump" if db_url.startswith("postgresql") else "copy.db"))
    backup = run_cityos("backup", copy, "--config", str(path))
    assert backup.returncode == 0, backup.stderr
    verified = run_cityos("backup", "--verify", copy, CITYOS_CONFIG=str(path))
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout + verified.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("databse = 'x'\n")
    refused = run_cityos("db", "status", CITYOS_CONFIG=str(bad))
    assert refused.returncode == 2 and "unknown setting 'databse'" in refused.stderr
