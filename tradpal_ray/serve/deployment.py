"""Ray Serve shell around the stats API: one deployment whose replicas each own a
:class:`StatsService` and run the FastAPI app in-process.

The replica exposes a plain ``__call__(request)`` handler that drives the ASGI app itself
instead of ``@serve.ingress``: with ``RAY_SERVE_ENABLE_HA_PROXY=1`` and
``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (set before Ray starts) that is Serve's fastest
request path. ``app`` is an application builder, so ``serve run tradpal_ray.serve:app
store=DIR`` and ``serve deploy serve_config.yaml`` work as well as ``tradpal-ray serve``.
Secrets (the Redis URL with its password, the API keys) should reach replicas through the
environment (``TRADPAL_REDIS_URL``, ``TRADPAL_API_KEYS``) rather than builder args, which
Serve shows in its config and dashboard.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message

from tradpal_ray.config import Settings, load_settings
from tradpal_ray.log import get_logger
from tradpal_ray.serve.api import build_app
from tradpal_ray.serve.settings import is_loopback
from tradpal_ray.stats import StatsService

log = get_logger(__name__)

ALL_INTERFACES = "0.0.0.0"


class AppArgs(BaseModel):
    """Builder arguments (``serve run ... key=value`` or ``args:`` in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    store: str | None = None
    """Store root; default TRADPAL_STORE."""
    redis_url: str | None = None
    """Redis URL; default TRADPAL_REDIS_URL (prefer the environment: it may hold a password)."""
    host: str | None = None
    """Address meant for the HTTP entry. Serve's own ``http_options`` decide where it really
    binds; the API key is skipped only when both are loopback."""
    num_replicas: int | None = None
    max_ongoing_requests: int | None = None
    autoscaling_config: dict[str, Any] | None = None
    """Serve autoscaling (min_replicas, max_replicas, target_ongoing_requests...); replaces num_replicas."""
    num_cpus: float = 0.5


async def serve_bind_host() -> str:
    """Where Serve's HTTP entry listens, as seen from a replica; all interfaces when unsure."""
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        return ALL_INTERFACES  # HAProxy and the replicas bind all interfaces whatever http_options say
    try:
        import ray
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return str((await controller.get_http_config.remote()).host)
    except Exception:  # noqa: BLE001 - private API: fail closed (key required)
        return ALL_INTERFACES


def api_key_required(host: str | None, serve_host: str) -> bool:
    """Whether replicas must demand an API key: unless Serve's real bind host and the builder's
    ``host`` (when given) are both loopback. Serve keeps the ``http_options`` it first started
    with, so the argument alone may claim loopback while Serve listens on every interface."""
    return not (is_loopback(serve_host) and (host is None or is_loopback(host)))


async def call_asgi(app: ASGIApp, request: Request) -> Response:
    """Run one request through an ASGI app in-process and return its complete response."""
    start: Message = {}
    body: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(request.scope, request.receive, send)
    response = Response(b"".join(body), status_code=start.get("status", 500))
    response.raw_headers = list(start.get("headers", []))
    return response


@serve.deployment(name="stats", max_ongoing_requests=256)
class StatsDeployment:
    """A replica: the service (cache pool, version watcher, warm-up) and the app over it."""

    async def __init__(self, store: str | None = None, redis_url: str | None = None, host: str | None = None) -> None:
        settings = load_settings(store=store, redis_url=redis_url)
        api = Settings()
        bound = await serve_bind_host()
        require_key = api_key_required(host, bound)
        self.service = StatsService(
            settings.store, settings.redis_url.get_secret_value() or None, timeout=api.cache_timeout_ms / 1000,
            db_url=settings.db_url.get_secret_value() or None,
        )
        self.app = build_app(self.service, require_key=require_key, api_keys=api.keys(),
                             cors_origins=api.origins(), manage_service=False)
        await self.service.start()
        # Everything allocated so far (pandas, pyarrow, FastAPI...) lives as long as the replica:
        # move it out of the cyclic GC's reach. Full collections over it cost p99 150-200 ms here.
        gc.freeze()
        log.info("stats.replica.ready", store=settings.store, host=bound, api_key_required=require_key)

    async def __call__(self, request: Request) -> Response:
        """Every HTTP request: through the FastAPI app, in this replica's event loop."""
        return await call_asgi(self.app, request)

    async def __del__(self) -> None:
        await self.service.close()


def app(args: dict[str, Any] | None = None) -> Application:
    """Application builder: ``serve run tradpal_ray.serve:app [store=DIR] [host=...]``."""
    parsed = AppArgs.model_validate(args or {})
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": parsed.num_cpus}}
    if parsed.autoscaling_config:
        options["autoscaling_config"] = parsed.autoscaling_config
    elif parsed.num_replicas:
        options["num_replicas"] = parsed.num_replicas
    if parsed.max_ongoing_requests:
        options["max_ongoing_requests"] = parsed.max_ongoing_requests
    return StatsDeployment.options(**options).bind(store=parsed.store, redis_url=parsed.redis_url, host=parsed.host)
