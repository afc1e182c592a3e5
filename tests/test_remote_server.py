"""The loopback NDIF server through plain nnsight, and every failure case produced for
real (API stopped, worker stopped, worker raising, socket closed, job over budget) --
each checked at the nnsight level and through headsurgeon.locate.remote's one-line errors."""
from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch

from headsurgeon.core.errors import RuntimeFailure
from headsurgeon.locate.remote import RemoteConfig, RemoteRunner, meta_model, model_key
from ndif_server import TINY_REPO, tiny_recipe

warnings.filterwarnings("ignore", category=DeprecationWarning)
PROMPTS = ["The answer is (A).", "I don't think that's right.", "Are you sure?", "Yes."]


def last_scores(model, prompts):
    """A locator-like body: per prompt, per-head norms of the o_proj input of layer 1 at
    the last position, and the final logit sum -- scores, not activations."""
    import nnsight

    out = []
    for text in prompts:
        with model.trace(text):
            o_in = model.model.layers[1].self_attn.o_proj.input[0, -1]
            heads = o_in.reshape(4, -1).norm(dim=-1)
            row = nnsight.save({"heads": heads, "logit_sum": model.lm_head.output[0, -1].sum()})
        out.append(row)
    return out


@pytest.fixture(scope="module")
def tiny_models(ndif_server):
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoTokenizer

    path = ndif_server.tiny_dir
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = TransformersModel(str(path), task="text-generation", tokenizer=tok,
                                  dispatch=True, attn_implementation="eager")
    return meta_model(path), local


def raw_backend(host, meta, **kw):
    from nnsight import CONFIG
    from nnsight.intervention.backends.remote import RemoteBackend

    CONFIG.APP.REMOTE_LOGGING = False
    return RemoteBackend(model_key(TINY_REPO), host=host, env=meta._remoteable_get_env(), **kw)


def runner(ndif, meta, tmp_path, **kw):
    cfg = RemoteConfig(host=ndif.host, poll_seconds=0.2, **kw)
    return RemoteRunner(meta, cfg, model_key(TINY_REPO), state_dir=tmp_path / "state",
                        fingerprint="f", progress=False)


def assert_one_line(exc: BaseException, *needles):
    text = str(exc)
    assert "\n" not in text and len(text) < 600, text
    for needle in needles:
        assert needle in text, text


@pytest.fixture
def cli_locate(ndif, shared_data, tmp_path):
    """``headsurgeon locate --remote`` on the tiny recipe: (exit code, stderr); checks that
    a failure leaves no heads.json."""
    from click.testing import CliRunner

    from headsurgeon.cli import cli

    def run(**ndif_settings):
        (tmp_path / "cli").mkdir(exist_ok=True)
        recipe = tiny_recipe(tmp_path / "cli" / "r.yaml", ndif.tiny_dir, shared_data,
                             **ndif_settings)
        out = tmp_path / "cli" / "heads.json"
        res = CliRunner().invoke(cli, ["locate", "--remote", str(recipe), "--out", str(out)])
        assert res.exit_code != 0 and not out.exists()
        msg = res.stderr[res.stderr.find("error: "):]  # after any progress bars
        assert res.stderr.count("error: ") == 1 and msg.count("\n") == 1, res.stderr
        return res.exit_code, msg
    return run


def test_plain_remote_trace_matches_local(ndif, tiny_models):
    meta, local = tiny_models
    with meta.trace("hello world", backend=raw_backend(ndif.host, meta)):
        remote_out = meta.lm_head.output.save()
    with local.trace("hello world"):
        local_out = local.lm_head.output.save()
    assert remote_out.shape == (1, 11, local.config.vocab_size)
    # Bit-identical when both processes use the same number of threads; across thread
    # counts the float reduction order may differ in the last bits.
    assert (remote_out - local_out.detach()).abs().max().item() <= 1e-6


def test_runner_jobs_match_local_and_are_sized_by_budget(ndif, tiny_models, tmp_path):
    meta, local = tiny_models
    served = ndif.served()
    run = runner(ndif, meta, tmp_path)  # units_per_job: sized from the first job
    remote = run.map("scores", PROMPTS, last_scores)
    expected = last_scores_local(local)
    for r, e in zip(remote, expected):
        assert set(r) == {"heads", "logit_sum"} and r["heads"].shape == (4,)
        assert torch.allclose(r["heads"], e["heads"], atol=1e-6)
        assert torch.allclose(r["logit_sum"], e["logit_sum"], atol=1e-5)
    # first job sizes the rest: 1 unit, then the other 3 in one session
    assert ndif.served() - served == 2 and run.describe()["jobs"] == 2
    assert run.describe()["host"] == ndif.host
    # the same stage mapped again (other units): sized already, one job, own results
    other = run.map("scores", PROMPTS[::-1], last_scores)
    assert ndif.served() - served == 3 and torch.equal(other[0]["heads"], remote[-1]["heads"])
    served += 1

    fixed = runner(ndif, meta, tmp_path / "b", units_per_job=3)
    again = fixed.map("scores", PROMPTS, last_scores)
    assert ndif.served() - served == 4  # ceil(4 / 3) more jobs
    assert all(torch.equal(a["heads"], b["heads"]) for a, b in zip(remote, again))


def last_scores_local(local):
    import nnsight

    with local.session():
        rows = last_scores(local, PROMPTS)
        nnsight.save(rows)
    return rows


def test_api_stopped_is_unreachable(ndif, tiny_models, tmp_path, cli_locate):
    meta, _ = tiny_models
    ndif.stop("api")
    with pytest.raises(ConnectionRefusedError):  # what raw nnsight gives
        with meta.trace("hi", backend=raw_backend(ndif.host, meta)):
            meta.lm_head.output.save()
    with pytest.raises(RuntimeFailure) as exc:
        runner(ndif, meta, tmp_path).map("scores", PROMPTS, last_scores)
    assert_one_line(exc.value, f"NDIF host {ndif.host} is unreachable", "NDIF_HOST")
    assert exc.value.exit_code != 0
    with pytest.raises(RuntimeFailure) as exc:  # non-blocking submit
        runner(ndif, meta, tmp_path / "nb", blocking=False).map("scores", PROMPTS, last_scores)
    assert_one_line(exc.value, "is unreachable")
    code, err = cli_locate()
    assert code == 1 and f"NDIF host {ndif.host} is unreachable" in err


def test_worker_stopped_gives_503(ndif, tiny_models, tmp_path, cli_locate):
    from nnsight.intervention.backends.remote import RemoteError

    meta, _ = tiny_models
    ndif.stop("worker")
    with pytest.raises(RemoteError, match="Service temporarily unavailable"):
        with meta.trace("hi", backend=raw_backend(ndif.host, meta)):
            meta.lm_head.output.save()
    with pytest.raises(RuntimeFailure) as exc:
        runner(ndif, meta, tmp_path).map("scores", PROMPTS, last_scores)
    assert_one_line(exc.value, "not connected to its compute backend (HTTP 503)",
                    "Service temporarily unavailable")
    code, err = cli_locate()
    assert code == 1 and "(HTTP 503)" in err


def test_worker_error_status_surfaces_server_summary(ndif, tiny_models, tmp_path, cli_locate):
    from nnsight.intervention.backends.remote import RemoteError

    meta, _ = tiny_models
    ndif.fault("raise")
    with pytest.raises(RemoteError) as raw:
        with meta.trace("hi", backend=raw_backend(ndif.host, meta)):
            meta.lm_head.output.save()
    assert "Traceback" in str(raw.value) and "injected worker fault" in str(raw.value)
    ndif.fault("raise")
    run = runner(ndif, meta, tmp_path, units_per_job=4)
    with pytest.raises(RuntimeFailure) as exc:
        run.map("scores", PROMPTS, last_scores)
    assert_one_line(exc.value, "failed on the server: RuntimeError: injected worker fault")
    state = json.loads((tmp_path / "state" / "jobs.json").read_text())
    (entry,) = state["stages"].values()
    assert entry["stage"] == "scores" and [j["status"] for j in entry["jobs"]] == ["failed"]
    ndif.fault("raise")
    code, err = cli_locate()
    assert code == 1 and "failed on the server: RuntimeError: injected worker fault" in err


def test_socket_closed_mid_job_is_retried_then_fails(ndif, tiny_models, tmp_path, cli_locate):
    import websocket

    meta, _ = tiny_models
    ndif.fault("close")
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        with meta.trace("hi", backend=raw_backend(ndif.host, meta)):
            meta.lm_head.output.save()
    ndif.wait_idle()
    served = ndif.served()
    ndif.fault("close")  # one close, one retry: succeeds
    rows = runner(ndif, meta, tmp_path / "a", retries=1, units_per_job=4).map(
        "scores", PROMPTS, last_scores)
    ndif.wait_idle()
    assert len(rows) == 4 and ndif.served() - served == 2  # the lost job ran too
    ndif.fault("close", "close")  # closes on every attempt: fails after 1 + retries
    with pytest.raises(RuntimeFailure) as exc:
        runner(ndif, meta, tmp_path / "b", retries=1, units_per_job=4).map(
            "scores", PROMPTS, last_scores)
    assert_one_line(exc.value, "closed mid-job 2 times", "locate.ndif.retries = 1")
    ndif.wait_idle()
    ndif.fault("close", "close", "close")
    code, err = cli_locate(retries=2)
    assert code == 1 and "closed mid-job 3 times (locate.ndif.retries = 2)" in err
    ndif.wait_idle()


def test_job_over_time_budget_fails(ndif, tiny_models, tmp_path, cli_locate):
    """Each job is held on the server until its client has given up, so giving up on the
    budget (not waiting for the job) is what ends each call -- no timing involved."""
    meta, _ = tiny_models
    ndif.fault("hold", "hold")
    served = ndif.served()
    with pytest.raises(RuntimeFailure) as exc:
        runner(ndif, meta, tmp_path, job_seconds=1, units_per_job=4).map(
            "scores", PROMPTS, last_scores)
    assert_one_line(exc.value, "ran longer than its time budget of 1 s",
                    "locate.ndif.job_seconds")
    assert ndif.served() == served  # the job could not have finished: it is still held
    ndif.release()  # the worker runs one job at a time: let the next one start
    with pytest.raises(RuntimeFailure) as exc:  # non-blocking: same budget while polling
        runner(ndif, meta, tmp_path / "nb", job_seconds=1, units_per_job=4,
               blocking=False).map("scores", PROMPTS, last_scores)
    assert_one_line(exc.value, "ran longer than its time budget")
    ndif.release()
    ndif.wait_idle()
    assert ndif.served() - served == 2  # both jobs ran to the end on the server
    ndif.fault("hold")
    code, err = cli_locate(job_seconds=1)
    assert code == 1 and "ran longer than its time budget of 1 s" in err
    ndif.release()
    ndif.wait_idle()


def test_non_blocking_resume_collects_instead_of_resubmitting(ndif, tiny_models, tmp_path):
    from headsurgeon.locate.remote import RemotePending

    meta, local = tiny_models
    served = ndif.served()
    first = runner(ndif, meta, tmp_path, blocking=False, wait=False, units_per_job=2)
    with pytest.raises(RemotePending) as exc:
        first.map("scores", PROMPTS, last_scores)
    assert exc.value.exit_code == 75 and "--resume" in str(exc.value)
    state = json.loads((tmp_path / "state" / "jobs.json").read_text())
    (entry,) = state["stages"].values()
    jobs = entry["jobs"]
    assert [j["status"] for j in jobs] == ["submitted", "submitted"]
    assert all(len(j["job_id"]) == 32 for j in jobs)

    cfg = RemoteConfig(host=ndif.host, poll_seconds=0.2, blocking=False, units_per_job=2)
    resumed = RemoteRunner(meta, cfg, model_key(TINY_REPO), state_dir=tmp_path / "state",
                           fingerprint="f", resume=True, progress=False)
    rows = resumed.map("scores", PROMPTS, last_scores)
    assert sorted(resumed.describe()["job_ids"]) == sorted(j["job_id"] for j in jobs)
    for r, e in zip(rows, last_scores_local(local)):
        assert torch.allclose(r["heads"], e["heads"], atol=1e-6)
    ndif.wait_idle()
    assert ndif.served() - served == 2  # two jobs, never resubmitted
    # a third run resumes from the cached results without touching any server
    from ndif_server import free_port

    nowhere = RemoteConfig(host=f"http://127.0.0.1:{free_port()}", blocking=False,
                           units_per_job=2)
    again = RemoteRunner(meta, nowhere, model_key(TINY_REPO), state_dir=tmp_path / "state",
                         fingerprint="f", resume=True, progress=False)
    assert all(torch.equal(a["heads"], b["heads"])
               for a, b in zip(again.map("scores", PROMPTS, last_scores), rows))
    from headsurgeon.core.errors import ValidationError

    with pytest.raises(ValidationError, match="another recipe"):
        RemoteRunner(meta, cfg, model_key(TINY_REPO), state_dir=tmp_path / "state",
                     fingerprint="other", resume=True, progress=False)


def test_api_key_is_sent_but_never_written(ndif, tiny_models, tmp_path, monkeypatch, caplog):
    meta, _ = tiny_models
    secret = "hs-SECRET-key-0123456789"
    monkeypatch.setenv("NDIF_API_KEY", secret)
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", "from-nnsight-config-file")
    cfg = RemoteConfig(host=ndif.host, poll_seconds=0.2, units_per_job=4,
                       api_key=__import__("os").environ["NDIF_API_KEY"])
    assert secret not in repr(cfg)
    run = RemoteRunner(meta, cfg, model_key(TINY_REPO), state_dir=tmp_path / "state",
                       fingerprint="f", progress=False)
    run.map("scores", PROMPTS, last_scores)
    assert ndif.redis().get("hs:last_key_sha256") == hashlib.sha256(secret.encode()).hexdigest()
    ndif.fault("raise")
    with pytest.raises(RuntimeFailure) as exc:
        RemoteRunner(meta, cfg, model_key(TINY_REPO), state_dir=tmp_path / "s2",
                     fingerprint="f", progress=False).map("x", PROMPTS, last_scores)
    texts = [str(exc.value), caplog.text, json.dumps(run.describe())]
    texts += [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(secret in t for t in texts)
