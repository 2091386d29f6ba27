"""Event sources: each yields blocks of events with their source positions."""

from __future__ import annotations

from engine.sources.background import BackgroundSource
from engine.sources.base import ARRIVAL_COLUMN, Source, SourceBlock
from engine.sources.files import FileSource
from engine.sources.memory import MemorySource
from engine.sources.synthetic import EVENT_MIX, SyntheticSource

__all__ = [
    "ARRIVAL_COLUMN",
    "BackgroundSource",
    "EVENT_MIX",
    "FileSource",
    "MemorySource",
    "Source",
    "SourceBlock",
    "SyntheticSource",
]
