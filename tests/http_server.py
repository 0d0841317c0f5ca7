"""An ASGI app served by uvicorn in a thread, for tests that talk real HTTP without Ray Serve."""

from __future__ import annotations

import threading
from typing import Any, Self

import uvicorn

from tradpal_ray.stats.local_redis import free_port, wait_for


class Server:
    """uvicorn running an app in a thread (lifespan included)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        wait_for(lambda: self.server.started, what="uvicorn start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
