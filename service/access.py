"""Who may reach a server: loopback addresses, and the bearer token both `medagent serve` and `medagent mcp` require
on any other address."""

from __future__ import annotations

import ipaddress
import os

from medagent.tools.config import Settings

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    """Whether `host` reaches only this machine; anything else exposes patient data to the network."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_token(settings: Settings) -> str | None:
    """The bearer token: [serve] token, else the env var [serve] token_env names (empty counts as none)."""
    token = settings.serve.token or os.environ.get(settings.serve.token_env, "")
    return token.strip() or None
