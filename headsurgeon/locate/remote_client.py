"""The nnsight-facing half of remote locate: one NDIF job, waited for our way.

``backend_class()`` subclasses nnsight's ``RemoteBackend`` to own the waiting: a
websocket read with a timeout so the job's time budget (``JobClock``) is enforced,
resubmission when the socket closes mid-job, server ERROR -> one sentence, and result
loading without general unpickling (``_load_envelope`` + ``torch.load(weights_only=True)``).
Every HTTP and websocket call to the host has connect and read timeouts and a bounded
retry (``locate.ndif.retries``; :mod:`headsurgeon.core.net`), and says what it waits for
once it takes a while. ``classify`` turns nnsight / httpx / websocket failures into one
user-facing sentence.
``session_job`` runs a body's traces as ONE nnsight session. The config object is a
:class:`headsurgeon.locate.remote.RemoteConfig` (host, api_key, retries, budgets).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import pickle
import time
import zipfile
from typing import Optional

from headsurgeon.core.net import CONNECT_ENV, NetPolicy, NoAnswer, call

log = logging.getLogger("headsurgeon.locate.remote")


class _SocketLost(Exception):
    pass


class JobError(Exception):
    """A job-level failure already phrased for the user (not yet redacted);
    ``transient``: the host could not be reached, the job itself may be fine."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def _load_envelope(data: bytes) -> dict:
    """A binary COMPLETED frame (``torch.save`` of a plain dict) without general
    unpickling: only ``nnsight``'s Status enum may be constructed, no tensors."""
    from nnsight.schema.response import Status

    class Envelope(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("nnsight.schema.response", "Status"):
                return Status
            raise pickle.UnpicklingError(f"refused {module}.{name} in an NDIF response")

        def persistent_load(self, pid):
            raise pickle.UnpicklingError("unexpected tensor in an NDIF response envelope")

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        return Envelope(io.BytesIO(zf.read(name))).load()


def _server_summary(description: str) -> str:
    """The last line of a server traceback ("RuntimeError: ...") or its first line."""
    lines = [ln.strip() for ln in str(description or "").splitlines() if ln.strip()]
    if not lines:
        return "no error description"
    tail = lines[-1] if len(lines) > 1 and lines[0].startswith("Traceback") else lines[0]
    return tail[:300]


class _TimedCalls:
    """nnsight's HTTP calls (submit, poll, download) under our timeouts, retried and
    announced once they take a while; mixed in before nnsight's ``RemoteBackend``."""

    def _net(self, what: str, fn, tries: Optional[int] = None):
        policy = self.net if tries is None else NetPolicy(self.net.connect, self.net.read,
                                                          tries)

        def timed():
            with _nnsight_timeouts(policy):
                return fn()
        return call(self.cfg.public_host, what, timed, policy=policy,
                    notice_after=min(2.0, policy.read / 4))

    def _post(self, request, blob):
        post = super()._post
        return self._net("submit an NDIF job", lambda: post(request, blob))

    def poll(self, tracer=None):  # failures are counted (bounded) by RemoteRunner._collect
        poll = super().poll
        return self._net(f"status of NDIF job {self.job_id}", lambda: poll(tracer), tries=1)

    def download_result(self, url):
        download = super().download_result
        if not url or isinstance(url, (bytes, bytearray)):  # the result came inline
            return download(url)
        return self._net(f"result of NDIF job {self.job_id}", lambda: download(url))


def backend_class():
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.schema.response import ResponseModel, Status

    class NdifBackend(_TimedCalls, RemoteBackend):
        """nnsight's RemoteBackend, with our waiting: budget, retries, safe loads."""

        def __init__(self, key: str, cfg, env: dict, *, blocking: bool,
                     job_id: Optional[str] = None):
            super().__init__(key, host=cfg.host, env=env, blocking=blocking, job_id=job_id)
            self.api_key = cfg.api_key  # NDIF_API_KEY only, never nnsight's config file
            self.compress = True
            self.display.enabled = False
            self.cfg = cfg
            self.result = None
            self.run_seconds: Optional[float] = None
            self.blob_bytes = 0
            self.net = NetPolicy.from_env(tries=cfg.retries + 1)

        def parse(self, message):
            if isinstance(message, (bytes, bytearray)):
                return ResponseModel(**_load_envelope(bytes(message)))
            return ResponseModel.model_validate_json(message)

        def finalize(self, content: bytes):
            import torch

            if self.compress:
                import zstandard

                content = zstandard.ZstdDecompressor().decompress(content)
            self.blob_bytes = len(content)
            return torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)

        def request(self, request, tracer):  # blocking: called from the session's exit
            blob = self._serialize(tracer)
            for attempt in range(self.cfg.retries + 1):
                try:
                    self.result = self._attempt(request.model_copy(), blob)
                    return self.result
                except _SocketLost:
                    log.warning("NDIF job %s: connection closed mid-job (attempt %d of %d)",
                                self.job_id, attempt + 1, self.cfg.retries + 1)
            raise JobError(f"NDIF job {self.job_id}: the connection to {self.host} closed "
                            f"mid-job {self.cfg.retries + 1} times (locate.ndif.retries = "
                            f"{self.cfg.retries})")

        def _attempt(self, request, blob):
            import websocket

            header = {"ndif-api-key": self.api_key} if self.api_key else None
            handshake = NetPolicy(self.net.connect, self.net.connect, self.net.tries)
            try:
                conn = call(self.cfg.public_host, "open the job status stream", lambda: (
                    websocket.create_connection(f"{self.ws_host}/subscribe", header=header,
                                                timeout=self.net.connect)),
                            policy=handshake, notice_after=min(2.0, self.net.connect / 4),
                            hint=f"{CONNECT_ENV} sets the connect and handshake timeout")
            except NoAnswer as exc:
                raise _no_answer(self.host, exc) from None
            except (OSError, websocket.WebSocketException) as exc:
                raise _unreachable(self.host, exc) from None
            clock = JobClock(self.cfg)
            try:
                conn.settimeout(self.net.read)  # the session id: an answer like any other
                try:
                    request.session_id = json.loads(conn.recv())["session_id"]
                except (OSError, ValueError, KeyError, websocket.WebSocketException):
                    raise _SocketLost() from None
                first = self._post(request, blob)
                self.job_id = first.id
                return _wait_for_result(self, conn, clock, Status)
            finally:
                conn.close()

    return NdifBackend


def _wait_for_result(backend, conn, clock: "JobClock", Status):
    """Read the job's status stream until it completes, fails or runs over its budget."""
    import websocket

    conn.settimeout(1.0)
    while True:
        try:
            message = conn.recv()
        except websocket.WebSocketTimeoutException:
            clock.check(backend.job_id)
            continue
        except (OSError, websocket.WebSocketException):
            raise _SocketLost() from None
        if not message:  # a close frame
            raise _SocketLost()
        response = backend.parse(message)
        clock.saw(response.status)
        if response.status == Status.ERROR:
            raise JobError(f"NDIF job {response.id} failed on the server: "
                           f"{_server_summary(response.description)}")
        if response.status == Status.COMPLETED:
            backend.run_seconds = clock.running_seconds()
            return backend.download_result(response.data)
        clock.check(backend.job_id)


class JobClock:
    """Queue and run time of one job, against its budget (wall clock: survives resume)."""

    def __init__(self, cfg, submitted: Optional[float] = None,
                 running: Optional[float] = None):
        self.cfg, self.submitted, self.running = cfg, submitted or time.time(), running
        self.done: Optional[float] = None

    def saw(self, status) -> None:
        value = getattr(status, "value", status)
        if value == "RUNNING" and self.running is None:
            self.running = time.time()
        if value == "COMPLETED":
            self.done = time.time()

    def running_seconds(self) -> float:
        end = self.done or time.time()
        return end - (self.running or self.submitted)

    def check(self, job_id) -> None:
        now = time.time()
        if self.running is not None and now - self.running > self.cfg.job_seconds:
            raise JobError(
                f"NDIF job {job_id} ran longer than its time budget of "
                f"{self.cfg.job_seconds:g} s (locate.ndif.job_seconds); lower "
                "locate.ndif.units_per_job or raise the budget")
        if self.running is None and now - self.submitted > self.cfg.queue_seconds:
            raise JobError(f"NDIF job {job_id} did not start within "
                            f"{self.cfg.queue_seconds:g} s (locate.ndif.queue_seconds)")


@contextlib.contextmanager
def _nnsight_timeouts(policy: NetPolicy):
    """nnsight's HTTP calls (submit, poll, download) with our timeouts: it reads them from
    module constants at call time (10 s connect, 600 s read in nnsight 0.8)."""
    from nnsight.intervention.backends import remote as nn_remote

    saved = {k: getattr(nn_remote, k, None) for k in ("_CONNECT_TIMEOUT", "_READ_TIMEOUT")}
    nn_remote._CONNECT_TIMEOUT, nn_remote._READ_TIMEOUT = policy.connect, policy.read
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(nn_remote, key, value)


def _no_answer(host: str, exc: NoAnswer) -> JobError:
    """A call that failed on every try, in the words of the other NDIF failures."""
    if exc.kind == "connect":
        return JobError(f"NDIF host {host} is unreachable ({exc.reason}; {exc.tries_text}); "
                        "check locate.ndif.host or NDIF_HOST", transient=True)
    return JobError(f"NDIF host {host} did not answer ({exc.what}) within {exc.seconds:g} s; "
                    f"{exc.tries_text} ({exc.hint})", transient=True)


def _unreachable(host: str, exc: BaseException) -> JobError:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return JobError(f"NDIF host {host} is unreachable ({reason}); check locate.ndif.host "
                     "or NDIF_HOST", transient=True)


def classify(exc: BaseException, host: str, job: str = "") -> JobError:
    """nnsight / httpx / websocket failures -> one user-facing sentence."""
    import httpx

    if isinstance(exc, JobError):
        return exc
    for err in (exc, exc.__cause__, exc.__context__):
        if isinstance(err, NoAnswer):
            return _no_answer(host, err)
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, httpx.HTTPStatusError):
        code = cause.response.status_code
        try:
            detail = cause.response.json().get("detail")
        except (ValueError, AttributeError):
            detail = cause.response.text
        detail = " ".join(str(detail or cause.response.reason_phrase).split())[:300]
        if code == 503:
            return JobError(f"NDIF host {host} is not connected to its compute backend "
                             f"(HTTP 503): {detail}", transient=True)
        if code in (401, 403):
            return JobError(f"NDIF host {host} refused the request (HTTP {code}): {detail}; "
                             "check NDIF_API_KEY")
        return JobError(f"NDIF host {host} answered HTTP {code}: {detail}",
                         transient=code >= 500)
    if isinstance(cause, (httpx.TransportError, OSError)):
        return _unreachable(host, cause)
    if type(exc).__name__ == "RemoteError":  # an ERROR status: the job failed on the server
        return JobError(f"{job or 'NDIF job'} failed on the server: "
                         f"{_server_summary(str(exc))}")
    return JobError(f"NDIF request failed: {type(exc).__name__}: "
                     f"{_server_summary(str(exc))}")


def session_job(model, backend, body, chunk):
    """Run ``body`` over ``chunk`` in ONE nnsight session (remote when ``backend``)."""
    import nnsight

    results = None
    with model.session(backend=backend):
        results = body(model, chunk)
        nnsight.save(results)
    return backend.result["results"] if backend is not None and backend.blocking else results
