"""The statistics HTTP API: a FastAPI app (:func:`build_app`) and its Ray Serve deployment.

``serve run tradpal_ray.serve:app`` / ``serve deploy serve_config.yaml`` / ``tradpal-ray serve``.
"""

from tradpal_ray.serve.api import API_KEY_HEADER, build_app
from tradpal_ray.serve.deployment import AppArgs, StatsDeployment, app, call_asgi
from tradpal_ray.serve.settings import is_loopback

__all__ = ["API_KEY_HEADER", "AppArgs", "StatsDeployment", "app", "build_app", "call_asgi", "is_loopback"]
