"""Validation of strategies and sweep results: look-ahead and warm-up checks of strategies."""

from tradpal_ray.validation._lookahead import (
    LookaheadBar,
    LookaheadReport,
    WarmupProbe,
    check_executor,
    check_strategy,
)

__all__ = ["LookaheadBar", "LookaheadReport", "WarmupProbe", "check_executor", "check_strategy"]
