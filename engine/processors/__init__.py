"""Processors: user code run on the hot and warm paths, and the built-in ones."""

from __future__ import annotations

from engine.processors.base import (
    HotProcessor,
    WarmProcessor,
    hot_processor,
    import_modules,
    qualified,
    register_hot,
    register_warm,
    warm_processor,
)
from engine.processors.day_features import DayFeatures
from engine.processors.minute_kpis import MinuteKpis, merge_kpis
from engine.processors.player_features import ALERT_SCHEMA, PlayerFeatures

__all__ = [
    "ALERT_SCHEMA",
    "DayFeatures",
    "HotProcessor",
    "MinuteKpis",
    "PlayerFeatures",
    "WarmProcessor",
    "hot_processor",
    "import_modules",
    "merge_kpis",
    "qualified",
    "register_hot",
    "register_warm",
    "warm_processor",
]
