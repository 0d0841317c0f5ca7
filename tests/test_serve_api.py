"""The HTTP API (FastAPI app under uvicorn on a free port, real Redis): endpoints, validation,
404s, API keys, CORS, and schemathesis over the OpenAPI spec."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from http_server import Server
from hypothesis import HealthCheck, given, settings
from redis_fixtures import run_id, write_run

from tradpal_ray.config import Settings
from tradpal_ray.errors import ConfigError
from tradpal_ray.serve import app, build_app, is_loopback
from tradpal_ray.serve.deployment import api_key_required, serve_bind_host
from tradpal_ray.stats import StatsService
from tradpal_ray.stats.local_redis import RedisProcess

R1 = run_id(1)

KEY = "k-test-0123456789"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api-store")
    write_run(root, R1)
    return root


@pytest.fixture(scope="module")
def api(store: Path, redis_server: RedisProcess) -> Iterator[str]:
    """Base URL of the app on loopback (no key needed)."""
    with Server(build_app(StatsService(store, redis_server.url), require_key=False)) as server:
        yield server.url


@pytest.fixture(scope="module")
def client(api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=10) as http:
        yield http


def test_endpoints(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True, "store": True, "redis": True}
    [run] = client.get("/runs").json()
    assert run["run_id"] == R1 and run["status"] == "complete"
    assert client.get(f"/runs/{R1}").json()["summary"]["results"] == 8
    board = client.get(f"/runs/{R1}/leaderboard", params={"metric": "return_pct", "top": 2, "symbol": "ETH/USDT"})
    assert board.status_code == 200 and board.headers["content-type"] == "application/json"
    rows = board.json()["results"]
    assert len(rows) == 2 and rows[0]["return_pct"] >= rows[1]["return_pct"] and rows[0]["symbol"] == "ETH/USDT"
    best = client.get(f"/runs/{R1}/leaderboard", params={"top": 1}).json()["results"][0]
    equity = client.get(f"/runs/{R1}/results/{best['result_id']}/equity").json()
    assert len(equity["equity"]["equity"]) == 600 and equity["trades"]
    assert {s["symbol"] for s in client.get("/symbols/stats").json()} == {"BTC/USDT", "ETH/USDT"}
    assert client.get("/symbols/stats", params={"symbol": "ETH/USDT", "timeframe": "1h"}).json()[0]["runs"] == 1
    assert client.get("/candles/coverage").json() == [] and client.get("/feeds").json() == []
    counts = client.get("/trades/count", params={"status": "closed"}).json()
    assert counts["count"] == counts["closed"] == counts["all"] - counts["open"]
    assert client.get("/trades/stats").json()["closed"] == counts["closed"]
    stats = client.get("/cache/stats").json()
    assert stats["redis"]["available"] and stats["by_kind"]["leaderboard"]
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/runs/{run_id}/leaderboard" in paths and "/" not in paths and client.get("/").status_code == 200  # the page


def test_responses_are_the_cached_bytes(client: httpx.Client, redis_server: RedisProcess) -> None:
    first = client.get(f"/runs/{R1}/leaderboard", params={"metric": "sortino", "top": 3})
    second = client.get(f"/runs/{R1}/leaderboard", params={"metric": "sortino", "top": 3})
    with redis_server.client() as redis:
        stored = {redis.get(key) for key in redis.keys("tradpal:stats:*:leaderboard:*")}
    assert first.content == second.content and second.content in stored


@pytest.mark.parametrize(("path", "params", "message"), [
    (f"/runs/{R1}/leaderboard", {"metric": "luck"}, "metric"),
    (f"/runs/{R1}/leaderboard", {"top": 0}, "greater than or equal to 1"),
    (f"/runs/{R1}/leaderboard", {"top": "ten"}, "valid integer"),
    (f"/runs/{R1}/leaderboard", {"timeframe": "7x"}, "timeframe"),
    ("/trades/count", {"status": "pending"}, "status"),
    (f"/runs/{R1}/results/not-an-id/equity", {}, "pattern"),
    ("/runs/bad id!/leaderboard", {}, "pattern"),
])
def test_bad_parameters_are_422_with_a_clear_message(client: httpx.Client, path: str, params: dict[str, Any], message: str) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 422 and message in response.text


@pytest.mark.parametrize(("path", "params"), [
    (f"/runs/{run_id(999)}", {}),
    (f"/runs/{run_id(999)}/leaderboard", {}),
    (f"/runs/{R1}/leaderboard", {"symbol": "SOL/USDT"}),
    (f"/runs/{R1}/results/0123456789abcdef/equity", {}),
    ("/symbols/stats", {"symbol": "DOGE/USDT"}),
])
def test_unknown_run_result_or_symbol_is_404(client: httpx.Client, path: str, params: dict[str, Any]) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 404 and response.json()["detail"]


def test_api_key_is_required_off_loopback(store: Path, redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADPAL_API_KEYS", f" {KEY} , other-key ")
    monkeypatch.setenv("TRADPAL_CORS_ORIGINS", "https://dash.example")
    api = Settings()
    assert api.keys() == [KEY, "other-key"] and KEY not in repr(api) and not is_loopback("0.0.0.0")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    with pytest.raises(ConfigError, match="TRADPAL_API_KEYS"):
        build_app(StatsService(store, None), require_key=True, api_keys=[])
    app = build_app(StatsService(store, redis_server.url), require_key=True, api_keys=api.keys(), cors_origins=api.origins())

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stats") as http:
            assert (await http.get("/health")).status_code == 200
            for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY + "x"}):
                response = await http.get("/runs", headers=headers)
                assert response.status_code == 401 and "X-API-Key" in response.json()["detail"]
            assert (await http.get("/runs", headers={"X-API-Key": KEY})).json()[0]["run_id"] == R1
            assert (await http.get("/cache/stats", headers={"X-API-Key": "other-key"})).status_code == 200
            allowed = await http.get("/health", headers={"Origin": "https://dash.example"})
            assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
            other = await http.get("/health", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers
            for path in ("/openapi.json", "/docs"):
                assert (await http.get(path)).status_code == 401, path
            assert (await http.get("/redoc", headers={"X-API-Key": KEY})).status_code == 404
            assert "swagger-ui" in (await http.get("/docs", headers={"X-API-Key": KEY})).text
            spec = (await http.get("/openapi.json", headers={"X-API-Key": KEY})).json()
            assert "X-API-Key" in orjson.dumps(spec["components"]["securitySchemes"]).decode()
            assert (await http.get("/health", headers={"Host": "rebound.example"})).status_code == 200  # keyed: any host

    asyncio.run(scenario())


def test_keyless_app_answers_loopback_hosts_only(client: httpx.Client, api: str) -> None:
    """DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1 gets a 400."""
    port = api.rsplit(":", 1)[1]
    for host in ("rebound.attacker.example", f"rebound.attacker.example:{port}", "192.168.1.5"):
        response = client.get("/runs", headers={"Host": host})
        assert response.status_code == 400 and "host" in response.text.lower(), host
    for host in ("127.0.0.1", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert client.get("/runs", headers={"Host": host}).status_code == 200, host


def test_api_key_required_unless_serve_and_argument_are_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve ignores a later ``http_options``: the builder's host alone must not waive the key."""
    assert not api_key_required(None, "127.0.0.1") and not api_key_required("localhost", "::1")
    assert api_key_required("127.0.0.1", "0.0.0.0")  # app arg loopback, Serve already on all interfaces
    assert api_key_required(None, "0.0.0.0") and api_key_required("0.0.0.0", "127.0.0.1")
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")  # HAProxy binds all interfaces whatever http_options say
    assert api_key_required("127.0.0.1", asyncio.run(serve_bind_host()))


def test_no_5xx_for_any_generated_input(api: str) -> None:
    """schemathesis: cases generated from /openapi.json for every operation, sent over HTTP."""
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 17  # 12 + the 4 /live/* routes + GET /runs/{run_id}/walkforward
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def no_server_error(case: Any) -> None:
            response = case.call(base_url=api, timeout=10)
            assert response.status_code < 500, (case.formatted_path, case.query, response.text[:300])

        no_server_error()


def test_schemathesis_reaches_real_runs(client: httpx.Client, make_run: Callable[..., Any]) -> None:
    """The generated cases mostly hit unknown run ids; real ids with odd filters must not 5xx either."""
    for params in ({"symbol": "\u0000"}, {"symbol": "../../x"}, {"strategy": "é" * 64}, {"metric": "fees", "top": 1000}):
        assert client.get(f"/runs/{R1}/leaderboard", params=params).status_code in (200, 404)
    assert client.get("/symbols/stats", params={"symbol": "../x", "exchange": "\t"}).status_code == 404


def test_serve_config_and_builder() -> None:
    import yaml
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(Path("serve_config.yaml").read_text()))
    [application] = config.applications
    assert application.import_path == "tradpal_ray.serve:app" and application.route_prefix == "/"
    assert isinstance(app(application.args), Application)
    assert isinstance(app({"store": "/x", "autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}), Application)


def test_cli_refuses_to_serve_off_loopback_without_keys(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from tradpal_ray.cli import main

    monkeypatch.delenv("TRADPAL_API_KEYS", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--host", "0.0.0.0", "--redis-url", "redis://:cli-secret@127.0.0.1:1/0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "TRADPAL_API_KEYS" in err and "cli-secret" not in err


def test_ids_of_the_wrong_shape_are_refused_and_errors_name_no_path(tmp_path: Path, redis_server: RedisProcess) -> None:
    """``/runs/%2E%2E`` used to serve a planted ``<store>/manifest.json``; a 503 used to show the
    store's absolute path."""
    store = tmp_path / "private-dir" / "store"
    write_run(store, R1)
    planted = orjson.loads((store / "runs" / R1 / "manifest.json").read_bytes()) | {"run_id": "PLANTED"}
    (store / "manifest.json").write_bytes(orjson.dumps(planted))
    broken = run_id(7)
    (store / "runs" / broken).mkdir()
    (store / "runs" / broken / "manifest.json").write_bytes(b"{not json")
    with Server(build_app(StatsService(store, redis_server.url), require_key=False)) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        for path in ("/runs/%2E%2E", "/runs/%2e%2E/leaderboard", f"/runs/{R1}/results/%2E%2E/equity",
                     "/runs/x%2F..%2F..", f"/runs/{R1}x"):
            response = http.get(path)
            assert response.status_code in (404, 422) and "PLANTED" not in response.text, (path, response.text)
        assert http.get("/runs/%2E%2E").status_code == 422 and "pattern" in http.get("/runs/%2E%2E").text
        assert http.get(f"/runs/{R1}").json()["run_id"] == R1
        corrupt = http.get(f"/runs/{broken}")
        assert corrupt.status_code == 503 and "corrupt manifest" in corrupt.text, corrupt.text
        assert str(tmp_path) not in corrupt.text and "private-dir" not in corrupt.text, corrupt.text
