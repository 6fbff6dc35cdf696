"""Talking to a running daemon from the CLI (filled in by the daemon work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["daemon_client"]


def daemon_client(home: Path | None, config_file: Path | None) -> Any:
    """A client of the daemon serving this home, or None when none runs."""
    return None
