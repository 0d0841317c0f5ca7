"""The HTML page at ``/`` in a real headless Chromium (Debian's ``chromium``) against the app under
uvicorn with a real Redis: it lists the runs, shows the API's leaderboard, draws the equity
curve, refreshes the feed status, and a screenshot is taken."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis_fixtures import run_id, write_run
from test_serve_api import KEY, Server

from tradpal_ray.feeds import FeedStatusStore
from tradpal_ray.serve import build_app
from tradpal_ray.serve.page import LEADERBOARD_TOP
from tradpal_ray.stats import StatsService
from tradpal_ray.stats.local_redis import RedisProcess

OLD, NEW = run_id(1), run_id(2)

FEED = {"exchange": "binance", "connector": "ws", "mode": "ws", "connected": True, "reconnects": 1, "now_ms": 1_717_200_000_000,
        "streams": [{"symbol": "BTC/USDT", "stream": "kline_1m", "messages": 42, "lag_ms": 1500}]}


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of the chromium binary; a clear failure (not a skip) when it is missing."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess) -> Iterator[str]:
    """The app on loopback over a store with two runs (``new`` is the newest) and one feed status."""
    root = tmp_path_factory.mktemp("page-store")
    write_run(root, OLD, created_at="2024-05-01T00:00:00+00:00", seed=2)
    write_run(root, NEW, symbols=("BTC/USDT", "ETH/USDT", "SOL/USDT"), grid={"fast": [5, 10, 15], "slow": [20, 30, 40]})
    FeedStatusStore(root).write("binance-ws", FEED)
    with Server(build_app(StatsService(root, redis_server.url), require_key=False)) as server:
        yield server.url


def browse(chromium: str, url: str, tmp_path: Path, *output: str) -> subprocess.CompletedProcess[str]:
    """Load ``url`` in headless Chromium, let 5 s of virtual time run (timers, fetches), then write ``output``."""
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", *output, url]
    done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def attribute(dom: str, element_id: str, name: str) -> str:
    """The value of attribute ``name`` of the element with id ``element_id`` in the dumped DOM."""
    tag = re.search(rf'<[a-z]+ [^>]*id="{element_id}"[^>]*>', dom)
    assert tag, f"no #{element_id} in the page"
    value = re.search(rf'\b{name}="([^"]*)"', tag.group(0))
    assert value, f"#{element_id} has no {name}: {tag.group(0)}"
    return value.group(1)


def test_page_shows_leaderboard_chart_and_feeds(chromium: str, site: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=site, timeout=10) as http:
        board = http.get(f"/runs/{NEW}/leaderboard", params={"top": LEADERBOARD_TOP}).json()
        best = board["results"][0]
        curve = http.get(f"/runs/{NEW}/results/{best['result_id']}/equity").json()["equity"]["equity"]
    dom = browse(chromium, f"{site}/", tmp_path, "--dump-dom").stdout

    assert attribute(dom, "leaderboard", "data-run") == NEW  # the newest run by default
    assert attribute(dom, "leaderboard", "data-metric") == board["metric"]
    assert re.findall(r'<tr data-result-id="([0-9a-f]{16})"', dom) == [row["result_id"] for row in board["results"]]
    assert len(board["results"]) == LEADERBOARD_TOP < board["total"]
    assert f'<td class="metric">{best[board["metric"]]:.2f}</td>' in dom
    assert re.search(rf'<tr data-result-id="{best["result_id"]}" class="selected">', dom)
    assert attribute(dom, "equity", "data-result-id") == best["result_id"]
    points = re.search(r'<div id="equity"[^>]*><svg [^>]*data-points="(\d+)"', dom)
    assert points and int(points.group(1)) == len(curve) > 100
    path = re.search(r'<path class="curve" d="([^"]+)"', dom)
    assert path and len(re.findall(r"[ML][\d.]+,[\d.]+", path.group(1))) == len(curve)

    feed = re.search(r'<tr data-feed="binance-ws">(.*?)</tr>', dom)
    assert feed and re.findall(r"<td[^>]*>([^<]*)</td>", feed.group(1)) == [
        "binance-ws", "binance", "ws", "yes", "1", "42", "1.5 s", "1", "2024-06-01 00:00"]
    assert int(attribute(dom, "feeds", "data-refreshes")) >= 2  # polled at 0, 2, 4 s of the 5 s budget
    assert 'id="error" role="alert"></span>' in dom  # no error shown


def test_page_selects_run_and_result_and_explains_missing_equity(chromium: str, site: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=site, timeout=10) as http:
        rows = http.get(f"/runs/{OLD}/leaderboard", params={"top": LEADERBOARD_TOP}).json()["results"]
        kept = [http.get(f"/runs/{OLD}/results/{row['result_id']}/equity").status_code == 200 for row in rows]
        unkept = rows[kept.index(False)]["result_id"]
    dom = browse(chromium, f"{site}/?run={OLD}&result={unkept}", tmp_path, "--dump-dom").stdout
    assert attribute(dom, "leaderboard", "data-run") == OLD
    assert re.findall(r'<tr data-result-id="([0-9a-f]{16})"', dom) == [row["result_id"] for row in rows]
    assert attribute(dom, "equity", "data-result-id") == unkept and "<svg" not in dom
    assert "No equity curve stored for this result" in dom and 'id="error" role="alert"></span>' in dom


def test_screenshot(chromium: str, site: str, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    browse(chromium, f"{site}/", tmp_path, f"--screenshot={shot}", "--window-size=1280,900")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1280, 900)
    assert len(data) > 30_000  # a blank or error page compresses to a few kB


def test_page_is_behind_the_api_key_and_loads_nothing_from_elsewhere(
    site: str, redis_server: RedisProcess, tmp_path: Path
) -> None:
    with httpx.Client(base_url=site, timeout=10) as http:
        page = http.get("/")
        assert "/" not in http.get("/openapi.json").json()["paths"]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=|https?://(?!www\.w3\.org/2000/svg)|@import", page.text)
    app = build_app(StatsService(tmp_path, redis_server.url), require_key=True, api_keys=[KEY])

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://stats") as http:
            assert (await http.get("/")).status_code == 401
            assert (await http.get("/", headers={"X-API-Key": KEY})).text == page.text

    asyncio.run(scenario())
