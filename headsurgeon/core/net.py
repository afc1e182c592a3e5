"""Network calls that cannot hang: connect and read timeouts, a bounded retry, and a line
saying what is being waited for.

Every call headsurgeon makes to a server (the Hugging Face Hub in ``apply/hub.py``, NDIF in
``locate/remote_client.py``) goes through :func:`call`. The timeouts come from
``HEADSURGEON_CONNECT_TIMEOUT`` (seconds to open a connection, default 10) and
``HEADSURGEON_READ_TIMEOUT`` (seconds without a byte of the answer, default 120); the
number of tries from ``HEADSURGEON_NET_TRIES`` (default 3) unless the caller has its own
setting (``locate.ndif.retries``). A call that fails on every try raises :class:`NoAnswer`.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

from headsurgeon.core.errors import RuntimeFailure, ValidationError

CONNECT_ENV, READ_ENV, TRIES_ENV = ("HEADSURGEON_CONNECT_TIMEOUT", "HEADSURGEON_READ_TIMEOUT",
                                    "HEADSURGEON_NET_TRIES")
BACKOFF_SECONDS = 0.5  # before the second try; doubled before each further one
T = TypeVar("T")

# exception class names (httpx, httpx2, requests, websocket-client, the socket module)
_CONNECT = {"ConnectError", "ConnectTimeout", "ConnectionRefusedError", "ConnectionError",
            "NewConnectionError", "gaierror", "ProxyError"}
_NO_ANSWER = {"ReadTimeout", "WriteTimeout", "PoolTimeout", "TimeoutError", "timeout",
              "WebSocketTimeoutException", "RemoteProtocolError", "ReadError",
              "ConnectionResetError", "WebSocketConnectionClosedException"}


@dataclass(frozen=True)
class NetPolicy:
    connect: float = 10.0
    read: float = 120.0
    tries: int = 3

    @classmethod
    def from_env(cls, tries: Optional[int] = None) -> "NetPolicy":
        return cls(connect=_env_number(CONNECT_ENV, cls.connect),
                   read=_env_number(READ_ENV, cls.read),
                   tries=tries if tries is not None else int(_env_number(TRIES_ENV, cls.tries,
                                                                         integer=True)))


def _env_number(name: str, default: float, integer: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if not value > 0 or value > 86400:
        raise ValidationError(f"{raw!r} is not a {'whole ' if integer else ''}number of "
                              f"{'tries' if integer else 'seconds'} in (0, 86400]",
                              field=name)
    return value


class NoAnswer(RuntimeFailure):
    """A network call failed on every try: no connection (``kind`` "connect") or no
    answer within the read timeout ("read")."""

    def __init__(self, endpoint: str, what: str, kind: str, reason: str, policy: NetPolicy,
                 hint: Optional[str] = None):
        self.endpoint, self.what, self.kind, self.reason = endpoint, what, kind, reason
        self.tries = policy.tries
        self.seconds = policy.connect if kind == "connect" else policy.read
        self.hint = hint or (f"{CONNECT_ENV} sets the connect timeout" if kind == "connect"
                             else f"{READ_ENV} sets the read timeout")
        self.tries_text = f"{policy.tries} tr{'y' if policy.tries == 1 else 'ies'}"
        if kind == "connect":
            msg = f"cannot connect to {endpoint} ({what}): {reason}; {self.tries_text}"
        else:
            msg = f"{endpoint} did not answer ({what}) within {self.seconds:g} s; {self.tries_text}"
        super().__init__(f"{msg} ({self.hint})")


def failure_kind(exc: BaseException) -> Optional[str]:
    """"connect", "read" (sent, no answer in time) or None (not a network failure: an
    HTTP error status, a bad reply). Looks through the exception's causes."""
    seen = 0
    while exc is not None and seen < 8:
        name = type(exc).__name__
        if name in _CONNECT:
            return "connect"
        if name in _NO_ANSWER:
            return "read"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _reason(exc: BaseException) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def call(endpoint: str, what: str, fn: Callable[[], T], *, policy: NetPolicy,
         retry_no_answer: bool = True, notice_after: float = 0.0,
         hint: Optional[str] = None) -> T:
    """``fn()``, tried up to ``policy.tries`` times on network failures. Says "waiting for
    ENDPOINT (WHAT)..." on stderr: at once, or only once the call has taken
    ``notice_after`` seconds. ``retry_no_answer=False`` for a call that must not be sent
    twice (the server may have acted on it): then only connection failures are retried."""
    from headsurgeon.core.progress import progress_note

    for attempt in range(1, policy.tries + 1):
        note = f"waiting for {endpoint} ({what})..." + (
            f" try {attempt} of {policy.tries}" if attempt > 1 else "")
        timer = threading.Timer(notice_after, progress_note, (note,))
        timer.daemon = True
        if notice_after <= 0:
            progress_note(note)
        else:
            timer.start()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - network failures retried, others raised
            kind = failure_kind(exc)
            if kind is None:
                raise
            last = NoAnswer(endpoint, what, kind, _reason(exc),
                            NetPolicy(policy.connect, policy.read, attempt), hint)
            if attempt == policy.tries or (kind == "read" and not retry_no_answer):
                raise last from exc
        finally:
            timer.cancel()
        time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
