"""Settings precedence, validation, and secret hygiene in logs (pure, no services)."""

from __future__ import annotations

import json

import pytest

from tradpal_ray.cli.app import settings_for
from tradpal_ray.config import load_settings
from tradpal_ray.errors import ConfigError
from tradpal_ray.log import configure_logging, get_logger, redact
from tradpal_ray.market.retry import Backoff, retry_after_seconds


def test_env_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADPAL_STORE", "/from/env")
    monkeypatch.setenv("TRADPAL_EXCHANGE_URL", "http://127.0.0.1:1")
    assert load_settings().store == "/from/env"
    settings = load_settings(store="/from/flag", exchange_url=None)
    assert settings.store == "/from/flag"
    assert settings.exchange_url == "http://127.0.0.1:1"


def test_bad_log_level_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADPAL_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError, match="log level must be one of"):
        settings_for()


def test_secrets_hidden_from_repr_and_logs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRADPAL_REDIS_URL", "rediss://:hunter2@cache.internal:6380/0")
    monkeypatch.setenv("TRADPAL_EXCHANGE_SECRET", "s3cr3t")
    settings = load_settings()
    assert "hunter2" not in repr(settings) and "s3cr3t" not in repr(settings)
    configure_logging("INFO", "json")
    log = get_logger("test")
    log.info("connect", url=settings.redis_url.get_secret_value(), api_secret="s3cr3t", symbol="BTC/USDT")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["event"] == "connect" and event["symbol"] == "BTC/USDT"
    assert "hunter2" not in line and "s3cr3t" not in line
    assert event["url"] == "rediss://:***@cache.internal:6380/0"
    try:
        raise ConnectionError(f"cannot reach {settings.redis_url.get_secret_value()}")
    except ConnectionError as exc:
        log.error("cache.down", exc_info=exc)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "hunter2" not in line and "cannot reach rediss://:***@cache.internal" in json.loads(line)["exception"]
    configure_logging("WARNING", "text")


def test_redact_leaves_plain_urls() -> None:
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    for plain in ("https://h:443/@me?q=1#f", "http://user@h/", "mailto:a@b.c", "see https://h/a?b=c.", "x://", 7):
        assert redact(plain) == plain


def test_redact_masks_every_url_password() -> None:
    """As redis-py reads a URL: the userinfo ends at the last "@", and ``?password=`` counts too."""
    assert redact("redis://u:p@ss@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact("rediss://:a@b@c@cache/0") == "rediss://:***@cache/0"
    assert redact("redis://h/0?password=s3cr3t") == "redis://h/0?password=***"
    assert redact("redis://h/0?db=1&Password=s3cr3t&ssl=true#x") == "redis://h/0?db=1&Password=***&ssl=true#x"
    text = "Traceback:\n  Error connecting to redis://:p@ss@cache:6379/0?password=s3cr3t. Refused.\nredis://u:pw@h2"
    assert redact(text) == "Traceback:\n  Error connecting to redis://:***@cache:6379/0?password=*** Refused.\nredis://u:***@h2"


def test_backoff_is_capped_and_honours_retry_after() -> None:
    policy = Backoff(retries=5, base=0.5, cap=4.0, jitter=False)
    assert [policy.delay(a) for a in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay(0, retry_after=3.0) == 3.0
    assert policy.delay(0, retry_after=60.0) == 4.0
    jittered = Backoff(base=0.5, cap=4.0)
    assert all(0.5 <= jittered.delay(a) <= 4.0 for a in range(20))
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"content-type": "x"}) is None
