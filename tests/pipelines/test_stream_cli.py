"""``millrace stream`` refuses bad input in one line, with the exit code a scheduler acts on: 2 for
a mistake in the command or the project, 75 (retry later) for a Redis that cannot be reached."""
from __future__ import annotations

import subprocess

import pytest

from tests.conftest import MILLRACE, cli_env


@pytest.fixture
def stream_cli(project_dir, tmp_path):
    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(MILLRACE + ["--project", str(project_dir), "stream", *args], capture_output=True,
                              text=True, env=cli_env(tmp_path / "state", **env), timeout=120)
    return run


def _one_error_line(proc: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    for phrase in phrases:
        assert phrase in proc.stderr, proc.stderr


def test_a_source_is_required(stream_cli):
    _one_error_line(stream_cli("--until-idle", "1"), 2, "--source NAME is required")
    bare = stream_cli()  # no arguments at all: the help, as for every command group
    assert bare.returncode == 2 and "produce" in bare.stdout + bare.stderr


def test_an_unknown_source_names_the_known_ones(stream_cli):
    _one_error_line(stream_cli("--source", "nope"), 2, "unknown source 'nope'", "movies, ratings")


def test_a_source_without_event_time_is_refused(stream_cli):
    _one_error_line(stream_cli("--source", "movies"), 2, "'movies' has no event-time field", "eventTime")


def test_an_unreachable_redis_is_retryable_and_its_password_never_shown(stream_cli):
    proc = stream_cli("--source", "ratings", "--until-idle", "1",
                      MILLRACE_STREAM_REDIS="redis://:s3cret@127.0.0.1:6390/0")
    _one_error_line(proc, 75, "redis://127.0.0.1:6390/0", "MILLRACE_STREAM_REDIS")
    assert "s3cret" not in proc.stdout + proc.stderr


@pytest.mark.redis
def test_a_key_that_is_not_a_stream_is_refused_not_overwritten(project_dir, tmp_path, redis_url):
    import secrets

    import redis
    import yaml

    prefix = f"mrt_{secrets.token_hex(5)}"
    config = yaml.safe_load((project_dir / "millrace.yaml").read_text())
    config["streaming"] = {"redis": redis_url, "prefix": prefix}
    (project_dir / "millrace.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    client = redis.Redis.from_url(redis_url)
    client.set(f"{prefix}:ratings", "someone else's value")
    try:
        for args in (["--source", "ratings", "--until-idle", "1"], ["produce", "--source", "ratings", "--limit", "5"]):
            proc = subprocess.run(MILLRACE + ["--project", str(project_dir), "stream", *args], capture_output=True,
                                  text=True, env=cli_env(tmp_path / "state"), timeout=120)
            _one_error_line(proc, 2, f"Redis key '{prefix}:ratings' holds a string, not a stream")
        assert client.get(f"{prefix}:ratings") == b"someone else's value"
    finally:
        client.delete(f"{prefix}:ratings")
        client.close()
