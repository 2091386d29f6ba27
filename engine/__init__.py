"""Thermocline's engine: the hot, warm and cold paths on Ray, fed by the router."""

from __future__ import annotations

import os

# Ray reads this when it is imported: with it, a local Ray binds and advertises 127.0.0.1 instead
# of the machine's network interface (PLATFORM_NOTES). Set before any engine module imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

__all__: list[str] = []
