"""The live view's settings: environment variables, the server's address and where its files go.

Environment variables, not params: turning the live view on or off, or moving it, re-runs no DVC stage.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HOST_ENV, PORT_ENV = "FOLDWISE_VISDOM_HOST", "FOLDWISE_VISDOM_PORT"
USER_ENV, PASSWORD_ENV = "VISDOM_USERNAME", "VISDOM_PASSWORD"  # visdom's own names, shared with the client
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8097
DEFAULT_ENV_PATH = Path(".foldwise/visdom/envs")  # saved environments, relative to the project (git-ignored)
ENABLE_ENV = "FOLDWISE_VISDOM"  # unset/off | on (the local server) | http://host:port
ENV_NAME_ENV = "FOLDWISE_VISDOM_ENV"  # override the environment's name
EVERY_ENV = "FOLDWISE_VISDOM_EVERY"  # per-step points: "1s" (default) = at most one a second; "25" = every 25 steps
LOG_DIR = Path(".foldwise/visdom/logs")


def server_url(value: str | None) -> str | None:
    """``FOLDWISE_VISDOM``'s value -> the server's base URL, or None when monitoring is off."""
    raw = value = (value or "").strip()
    if value.lower() in ("", "0", "off", "false", "no"):
        return None
    if value.lower() in ("1", "on", "true", "yes"):
        host = os.environ.get(HOST_ENV, DEFAULT_HOST)
        host = DEFAULT_HOST if host in ("0.0.0.0", "::") else host
        return f"http://{host}:{os.environ.get(PORT_ENV, DEFAULT_PORT)}"
    if not re.match(r"^https?://", value):
        value = "http://" + value
    if not re.match(r"^https?://[^/:]+(:\d+)?/?$", value):
        raise ValueError(f"{ENABLE_ENV}={raw!r} is not valid; use on, off or a URL such as http://127.0.0.1:8097")
    return value.rstrip("/")
