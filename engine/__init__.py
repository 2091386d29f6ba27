"""Thermocline's engine: the hot, warm and cold paths on Ray, fed by the router."""

from __future__ import annotations

__all__: list[str] = []
