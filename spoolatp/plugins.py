"""Placeholder until the plugin issue lands: no hooks yet."""

from __future__ import annotations

from typing import Any


def notify(event: str, info: dict[str, Any]) -> None:
    """Tell lifecycle-hook plugins about ``event``; nothing yet."""
