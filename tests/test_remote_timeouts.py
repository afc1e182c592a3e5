"""NDIF calls against a host that accepts connections and never answers: each call ends at
its timeout, the tries are bounded by locate.ndif.retries, and the one-line error says
what was waited for (blocking: the job status stream; non-blocking: the job submission)."""
from __future__ import annotations

import warnings

import pytest

from headsurgeon.core import net
from headsurgeon.core.errors import RuntimeFailure
from headsurgeon.locate.remote import RemoteConfig, RemoteRunner, meta_model, model_key
from silent_server import Silent

warnings.filterwarnings("ignore", category=DeprecationWarning)


def head_norms(model, prompts):
    """A locator-like body (shipped to the host by value)."""
    import nnsight

    out = []
    for text in prompts:
        with model.trace(text):
            row = nnsight.save({"logit_sum": model.lm_head.output[0, -1].sum()})
        out.append(row)
    return out


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    from headsurgeon.model.tiny import build_tiny

    return meta_model(build_tiny("llama", tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture
def silent(monkeypatch):
    monkeypatch.setenv(net.CONNECT_ENV, "1")
    monkeypatch.setenv(net.READ_ENV, "1.5")
    monkeypatch.setattr(net, "BACKOFF_SECONDS", 0.1)
    server = Silent()
    yield server
    server.close()


def run(meta, silent, tmp_path, **cfg):
    runner = RemoteRunner(meta, RemoteConfig(host=silent.url, retries=1, poll_seconds=0.1,
                                             **cfg),
                          model_key("org/m"), state_dir=tmp_path / "state", fingerprint="f",
                          progress=False)
    with pytest.raises(RuntimeFailure) as exc:
        runner.map("scores", ["hello there"], head_norms)
    return str(exc.value)


def test_blocking_job_gives_up_on_a_silent_host(meta, silent, tmp_path, capfd):
    msg = run(meta, silent, tmp_path)
    assert msg == (f"NDIF host {silent.url} did not answer (open the job status stream) "
                   "within 1 s; 2 tries (HEADSURGEON_CONNECT_TIMEOUT sets the connect and "
                   "handshake timeout)")
    assert silent.request_lines() == ["GET /subscribe HTTP/1.1"] * 2  # one handshake a try
    assert f"waiting for {silent.url} (open the job status stream)..." in capfd.readouterr().err


def test_non_blocking_submit_gives_up_on_a_silent_host(meta, silent, tmp_path, capfd):
    msg = run(meta, silent, tmp_path, blocking=False)
    assert msg == (f"NDIF host {silent.url} did not answer (submit an NDIF job) within "
                   "1.5 s; 2 tries (HEADSURGEON_READ_TIMEOUT sets the read timeout)")
    assert silent.request_lines() == ["POST /request HTTP/1.1"] * 2  # one POST a try
    assert f"waiting for {silent.url} (submit an NDIF job)..." in capfd.readouterr().err


def test_a_refused_connection_is_retried_then_unreachable(meta, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(net, "BACKOFF_SECONDS", 0.01)
    runner = RemoteRunner(meta, RemoteConfig(host=f"http://127.0.0.1:{port}", retries=2,
                                             blocking=False),
                          model_key("org/m"), state_dir=tmp_path / "s", fingerprint="f",
                          progress=False)
    with pytest.raises(RuntimeFailure) as exc:
        runner.map("scores", ["hi"], head_norms)
    assert str(exc.value).startswith(f"NDIF host http://127.0.0.1:{port} is unreachable (")
    assert str(exc.value).endswith("; 3 tries); check locate.ndif.host or NDIF_HOST")
