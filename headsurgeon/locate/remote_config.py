"""How remote locate reaches NDIF: host, job budget, retries, and the API key.

The key comes from ``NDIF_API_KEY`` only and is never printed: :meth:`RemoteConfig.redact`
scrubs it (and any user:password in the host) from every message built from a config.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from headsurgeon.core.errors import ValidationError


@dataclass(frozen=True)
class RemoteConfig:
    host: str
    job_seconds: float = 900
    queue_seconds: float = 3600
    retries: int = 2
    blocking: bool = True
    wait: bool = True
    poll_seconds: float = 5
    units_per_job: Optional[int] = None
    api_key: str = field(default="", repr=False)

    @classmethod
    def from_recipe(cls, recipe) -> "RemoteConfig":
        s = recipe.locate.ndif
        return cls(host=resolve_host(s.host), job_seconds=s.job_seconds,
                   queue_seconds=s.queue_seconds, retries=s.retries, blocking=s.blocking,
                   wait=s.wait, poll_seconds=s.poll_seconds, units_per_job=s.units_per_job,
                   api_key=os.environ.get("NDIF_API_KEY", ""))

    @property
    def public_host(self) -> str:
        """The host without any user:password part (safe to print and record)."""
        parts = urlsplit(self.host)
        return urlunsplit(parts._replace(netloc=parts.hostname + (
            f":{parts.port}" if parts.port else ""))) if parts.hostname else self.host

    def redact(self, text: str) -> str:
        text = str(text)
        if self.api_key:
            text = text.replace(self.api_key, "***")
        return text.replace(self.host, self.public_host) if self.host else text


def resolve_host(explicit: Optional[str] = None) -> str:
    """``locate.ndif.host``, else ``NDIF_HOST``, else nnsight's configured host."""
    host = explicit or os.environ.get("NDIF_HOST")
    if not host:
        from nnsight import CONFIG

        host = CONFIG.API.HOST
    host = host.rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise ValidationError(f"NDIF host {host!r} must start with http:// or https://",
                              field="locate.ndif.host")
    return host
