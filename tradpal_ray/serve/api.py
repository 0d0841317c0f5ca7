"""The read-only HTTP API of the statistics service, as a FastAPI app over a :class:`StatsService`.

The same app runs under Ray Serve (see :mod:`tradpal_ray.serve.deployment`) and under plain
uvicorn. Handlers return the service's bytes as they are (cached payloads are never
decoded and re-encoded). ``/`` is the HTML page (:mod:`tradpal_ray.serve.page`), outside the spec.
"""

from __future__ import annotations

import gc
import hmac
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.middleware.trustedhost import TrustedHostMiddleware

from tradpal_ray.errors import ConfigError, StoreError
from tradpal_ray.log import get_logger
from tradpal_ray.market.schema import TIMEFRAMES
from tradpal_ray.runs import RESULT_ID_PATTERN, RUN_ID_PATTERN
from tradpal_ray.serve.page import page_response
from tradpal_ray.stats import NotFound, StatsService
from tradpal_ray.trading import TRADER_NAME

log = get_logger(__name__)

API_KEY_HEADER = "X-API-Key"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""``Host`` headers a keyless (loopback) app answers: a DNS-rebound name is refused (400)."""

Timeframe = Literal[tuple(TIMEFRAMES)]  # type: ignore[valid-type]
TradeStatus = Literal["all", "open", "closed"]
RunId = Annotated[str, Path(pattern=RUN_ID_PATTERN, description="A run id, as listed by /runs.")]
ResultId = Annotated[str, Path(pattern=RESULT_ID_PATTERN, description="A result id, as listed by a leaderboard.")]
Text = Annotated[str | None, Query(min_length=1, max_length=64)]
TraderName = Annotated[str | None, Query(pattern=TRADER_NAME.pattern, description="Only this trader.")]
Day = Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$", description="One UTC day, YYYY-MM-DD; default every day.")]


def _json(payload: bytes, status_code: int = 200) -> Response:
    return Response(content=payload, status_code=status_code, media_type="application/json")


class _Unauthorized(Exception):
    """No or a wrong API key (answered 401)."""


def api_key_guard(keys: Sequence[str]) -> Any:
    """A dependency accepting requests whose ``X-API-Key`` is one of ``keys`` (constant-time compare)."""
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Required when the API is bound off loopback.")
    encoded = [key.encode() for key in keys]

    async def check(key: str | None = Depends(header)) -> None:
        given = (key or "").encode()
        if not any(hmac.compare_digest(given, k) for k in encoded):
            raise _Unauthorized

    return Depends(check)


def add_live_routes(api: APIRouter, service: StatsService) -> None:
    """The live statistics over the trade ledger (cached, fresh on every ledger change)."""

    @api.get("/live/trades/count", tags=["live"], summary="Round trips in the trade ledger: all, open or closed.")
    async def live_trade_count(status: TradeStatus = "all", trader: TraderName = None) -> Response:
        return _json(await service.live_trade_counts(status, trader))

    @api.get("/live/stats", tags=["live"], summary="Per UTC day: trades, win rate, PnL, fees, best and worst trade.")
    async def live_stats(day: Day = None, trader: TraderName = None) -> Response:
        return _json(await service.live_stats(day, trader))

    @api.get("/live/traders", tags=["live"],
             summary="Every trader: status, positions, equity, last decision and its latency; the recent fills.")
    async def live_traders() -> Response:
        return _json(await service.live_traders())

    @api.get("/live/traders/{name}/equity", tags=["live"], summary="One trader's equity snapshots.")
    async def live_trader_equity(name: Annotated[str, Path(pattern=TRADER_NAME.pattern)]) -> Response:
        return _json(await service.live_trader_equity(name))


def build_app(
    service: StatsService,
    *,
    require_key: bool,
    api_keys: Sequence[str] = (),
    cors_origins: Sequence[str] = (),
    manage_service: bool = True,
) -> FastAPI:
    """The FastAPI app. ``require_key``: every route but ``/health`` (the page, ``/docs`` and
    ``/openapi.json`` included) needs a valid ``X-API-Key`` (ConfigError if no key is
    configured); without it only loopback ``Host`` headers are answered, against DNS rebinding.
    ``manage_service``: start and close ``service`` with the app's lifespan (plain uvicorn);
    Serve replicas manage it themselves."""
    if require_key and not api_keys:
        raise ConfigError("the API is reachable off loopback: set TRADPAL_API_KEYS (comma-separated keys)")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_service:
            await service.start()
            gc.freeze()  # see StatsDeployment: keeps full collections off the request path
        try:
            yield
        finally:
            if manage_service:
                await service.close()

    app = FastAPI(
        title="tradpal-ray statistics", version="1", lifespan=lifespan,
        openapi_url=None, docs_url=None, redoc_url=None,  # served by the guarded router below
        description="Read-only statistics over sweep runs, candle coverage, feeds and recorded trades. "
        "Times are epoch milliseconds; NaN and infinite statistics are null.",
    )
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET"],
                           allow_headers=[API_KEY_HEADER])
    if not require_key:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS))

    # Error bodies name no filesystem path (service.public_message): the store's layout is its own business.
    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": service.public_message(exc)}, status_code=404)

    @app.exception_handler(ConfigError)
    async def bad_request(_request: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": service.public_message(exc)}, status_code=422)

    @app.exception_handler(StoreError)
    async def store_error(_request: Request, exc: StoreError) -> JSONResponse:
        log.warning("stats.api.store_error", error=str(exc))  # the operator's log names the file
        return JSONResponse({"detail": f"store unavailable: {service.public_message(exc)}"}, status_code=503)

    @app.exception_handler(_Unauthorized)
    async def unauthorized(_request: Request, _exc: _Unauthorized) -> JSONResponse:
        return JSONResponse({"detail": f"missing or invalid {API_KEY_HEADER} header"}, status_code=401)

    @app.get("/health", tags=["health"], summary="Liveness: the process answers.")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    api = APIRouter(dependencies=[api_key_guard(api_keys)] if require_key else [])

    @api.get("/", include_in_schema=False)
    async def page() -> Response:
        return page_response()

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @api.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="openapi.json", title=f"{app.title} - docs")  # relative: route prefixes work

    @api.get("/ready", tags=["health"], summary="Readiness: the store can be listed and Redis answers (503 if not).")
    async def ready() -> JSONResponse:
        state = await service.readiness()
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    @api.get("/runs", tags=["runs"], summary="Every run (sweeps and walk-forwards, see `kind`), newest first.")
    async def runs() -> Response:
        return _json(await service.runs())

    @api.get("/runs/{run_id}", tags=["runs"], summary="One run's manifest and a per-symbol summary of its results.")
    async def run(run_id: RunId) -> Response:
        return _json(await service.run(run_id))

    @api.get("/runs/{run_id}/leaderboard", tags=["runs"],
             summary="A run's top results by a metric, and its overfitting statistics (DSR, PBO) per symbol.")
    async def leaderboard(
        run_id: RunId,
        metric: Annotated[str | None, Query(description="Metric to rank by (any of the metric registry); default: the run's.", max_length=64)] = None,
        top: Annotated[int, Query(ge=1, le=1000)] = 10,
        symbol: Text = None,
        strategy: Text = None,
        timeframe: Timeframe | None = None,
    ) -> Response:
        return _json(await service.leaderboard(run_id, metric, top, symbol, strategy, timeframe))

    @api.get("/runs/{run_id}/results/{result_id}/equity", tags=["runs"],
             summary="Equity curve and trades of one kept result (the best few per symbol).")
    async def equity(run_id: RunId, result_id: ResultId) -> Response:
        return _json(await service.equity(run_id, result_id))

    @api.get("/runs/{run_id}/walkforward", tags=["runs"],
             summary="A walk-forward run: per-fold windows, choices and IS/OOS statistics, stitched OOS equity, WFE.")
    async def walkforward(run_id: RunId) -> Response:
        return _json(await service.walkforward(run_id))

    @api.get("/symbols/stats", tags=["symbols"], summary="Per-symbol statistics across runs.")
    async def symbol_stats(exchange: Text = None, symbol: Text = None, timeframe: Timeframe | None = None) -> Response:
        return _json(await service.symbol_stats(exchange, symbol, timeframe))

    @api.get("/candles/coverage", tags=["market data"], summary="Stored candle series: ranges and gaps.")
    async def coverage() -> Response:
        return _json(await service.coverage())

    @api.get("/feeds", tags=["market data"], summary="Latest status of each live feed.")
    async def feeds() -> Response:
        return _json(await service.feeds())

    @api.get("/trades/count", tags=["trades"], summary="Recorded trades: all, open or closed.")
    async def trade_count(status: TradeStatus = "all") -> Response:
        return _json(await service.trade_counts(status))

    @api.get("/trades/stats", tags=["trades"], summary="Win rate, PnL and profit factor of the recorded trades.")
    async def trade_stats() -> Response:
        return _json(await service.trade_stats())

    add_live_routes(api, service)

    @api.get("/cache/stats", tags=["health"], summary="Cache hits, misses, errors and latencies of this replica.")
    async def cache_stats() -> Response:
        return _json(service.cache_stats())

    app.include_router(api)
    return app
