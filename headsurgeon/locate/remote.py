"""Remote locate on NDIF: run the locators' traces on a model we cannot load here.

Work is a list of *units* (e.g. probe batches) and a *body*, ``body(model, units) ->
[dict[str, Tensor] per unit]``, that runs traces and reduces them to small score tensors.
:class:`RemoteRunner` packs units into *jobs*, each ONE nnsight session on the NDIF host
(so only scores come back), sized from the first job to stay under ``locate.ndif.
job_seconds``; a job over its budget fails. Blocking jobs stream their status over a
websocket and are resubmitted when it closes mid-job (``locate.ndif.retries``);
non-blocking jobs are submitted over HTTP, their ids persisted in ``<out>.ndif/jobs.json``,
and polled -- ``locate --resume`` collects them instead of resubmitting. Finished job
results are cached beside it, so a resumed run never recomputes them.

The API key comes from ``NDIF_API_KEY`` only; it is never written to a file, log, report
or error text (every message built here is redacted). Host: ``locate.ndif.host``, else
``NDIF_HOST``, else nnsight's configured default.

nnsight use is deliberately small: ``RemoteBackend`` (subclassed in
:mod:`headsurgeon.locate.remote_client` to own the waiting, retries, time budget and a
pickle-free result load), ``model.session(backend=...)``, ``nnsight.save`` and
``nnsight.register`` (ships the body's module by value: NDIF has no headsurgeon
installed), plus ``TransformersModel`` for the weightless meta model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from headsurgeon.core.atomic import atomic_write_bytes, atomic_write_json
from headsurgeon.core.errors import RuntimeFailure, ValidationError
from headsurgeon.locate.remote_config import RemoteConfig, resolve_host  # noqa: F401
from headsurgeon.locate.remote_client import JobClock, JobError, backend_class, classify, session_job

FORMAT = "headsurgeon.remote-jobs/1"
TASK = "text-generation"
log = logging.getLogger("headsurgeon.locate.remote")


class RemotePending(RuntimeFailure):
    """Jobs were submitted (``locate.ndif.wait: false``); ``--resume`` collects them."""

    exit_code = 75  # EX_TEMPFAIL: nothing failed, come back later


def model_key(remote_id: str, *, revision: Optional[str] = None, task: str = TASK) -> str:
    """nnsight's remote model key for a Hub repo id (what NDIF deploys and runs)."""
    return ("nnsight.modeling.transformers.TransformersModel:"
            + json.dumps({"repo_id": remote_id, "revision": revision, "task": task}))


def meta_model(path: str | Path, *, attn_implementation: Optional[str] = "eager"):
    """An nnsight model with the architecture of ``path`` on the meta device (no weights):
    enough to build traces that run on NDIF."""
    import warnings

    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoConfig, AutoTokenizer

    path = str(path)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    if attn_implementation:
        cfg._attn_implementation = attn_implementation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformersModel(path, task=TASK, tokenizer=tok, config=cfg)


def ship(*modules) -> None:
    """Send these modules' code by value with every job (NDIF has no headsurgeon)."""
    import nnsight

    for module in modules:
        nnsight.register(module)


def fingerprint(recipe) -> str:
    """What remote locate results depend on: model, data, templates and the locate
    section except how it reaches NDIF (``remote``, ``ndif``), so ``--resume`` survives
    edits of budgets, retries or ``wait``."""
    loc = recipe.locate.model_dump(mode="json", exclude={"remote", "ndif"})
    doc = {"model": recipe.model.model_dump(mode="json"), "locate": loc,
           "data": recipe.data.model_dump(mode="json"),
           "templates": recipe.templates.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _check_results(results, n: int) -> list[dict]:
    import torch

    ok = (isinstance(results, list) and len(results) == n and all(
        isinstance(r, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                    for k, v in r.items()) for r in results))
    if not ok:
        raise RuntimeFailure("a remote locator body must return one dict of tensors per unit")
    return results


def _digest(obj) -> str:
    """A stable hash of units (nested lists/dicts of str/int/float/tensors)."""
    import torch

    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x):
                feed(k)
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()[:32]


# ------------------------------------------------------------------ the runner


class RemoteRunner:
    """Run locator bodies on NDIF in budgeted jobs, with persisted, resumable state."""

    def __init__(self, model, cfg: RemoteConfig, key: str, *, state_dir: Path,
                 fingerprint: str, resume: bool = False, progress: bool = True):
        self.model, self.cfg, self.key = model, cfg, key
        self.state_dir, self.progress = Path(state_dir), progress
        self.env = model._remoteable_get_env()
        self._Backend = backend_class()
        self.job_ids: list[str] = []
        self.state_path = self.state_dir / "jobs.json"
        fresh = {"format": FORMAT, "fingerprint": fingerprint, "host": cfg.public_host,
                 "model_key": key, "stages": {}}
        if resume and self.state_path.is_file():
            try:
                state = json.loads(self.state_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValidationError(f"unreadable remote job state: {exc}",
                                      file=str(self.state_path)) from None
            if state.get("format") != FORMAT or state.get("fingerprint") != fingerprint \
                    or state.get("model_key") != key:
                raise ValidationError(
                    "these remote jobs were submitted for another recipe, model or data; "
                    "run without --resume to start over", file=str(self.state_path))
            self.state = state
        else:
            if resume:
                log.warning("nothing to resume in %s: submitting new jobs", self.state_dir)
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state = fresh

    # -- public ---------------------------------------------------------------------
    def describe(self) -> dict:
        """What heads.json records about the backend that produced the scores."""
        return {"backend": "ndif", "host": self.cfg.public_host, "model_key": self.key,
                "jobs": len(self.job_ids), "job_ids": list(self.job_ids)}

    def finish(self) -> None:
        """Forget the job state (call once the stage's output is written)."""
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def map(self, stage: str, units: Sequence, body: Callable) -> list[dict]:
        """``body(model, units[i:j])`` over all units in jobs; per-unit results, in order."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", stage):
            raise ValueError(f"bad stage name {stage!r}")
        ship(body.__module__)
        units = list(units)
        # one entry per (stage, body, units): a locator may map the same stage many times
        sid = f"{stage}-{_digest([body.__module__, body.__qualname__, units])[:16]}"
        st = self.state["stages"].get(sid)
        if st is None:
            sized = self.state.setdefault("per_job", {}).get(stage, self.cfg.units_per_job)
            st = self.state["stages"][sid] = {"stage": stage, "n": len(units),
                                              "per_job": sized, "jobs": []}
            self._save()
        try:
            return self._map(sid, st, units, body)
        except JobError as exc:
            self._save()
            raise RuntimeFailure(self.cfg.redact(str(exc))) from None

    # -- internals ------------------------------------------------------------------
    def _map(self, stage, st, units, body) -> list[dict]:
        from headsurgeon.core.progress import progress_bar

        out: list[Optional[dict]] = [None] * len(units)
        if not self.cfg.blocking and not self.cfg.wait and st["per_job"] is None:
            st["per_job"] = 1  # submit-and-exit cannot time a first job to size the rest
        bar = progress_bar(total=len(units), desc=f"NDIF {st['stage']}", unit="unit",
                           leave=False, disable=not self.progress)
        try:
            for job in st["jobs"]:  # finished in an earlier run
                if job["status"] == "done":
                    self._fill(out, job, self._load(stage, job))
                    bar.update(job["stop"] - job["start"])
            self._collect(stage, st, out, bar)  # submitted by an earlier (non-blocking) run
            while True:
                job = self._next_job(st)
                if job is None:
                    break
                if self.cfg.blocking:
                    results = self._run_blocking(stage, st, job, units, body)
                    self._fill(out, job, results)
                    bar.update(job["stop"] - job["start"])
                else:
                    self._submit(job, units, body)
                    if st["per_job"] is None:  # the sizing job: wait for it
                        self._collect(stage, st, out, bar, only=job)
            if not self.cfg.blocking:
                if not self.cfg.wait and any(j["status"] == "submitted" for j in st["jobs"]):
                    pending = sum(j["status"] == "submitted" for j in st["jobs"])
                    raise RemotePending(
                        f"{pending} NDIF job(s) submitted to {self.cfg.public_host}; run "
                        "`headsurgeon locate --resume` to collect them")
                self._collect(stage, st, out, bar)
        finally:
            bar.close()
        return out  # type: ignore[return-value]

    def _next_job(self, st) -> Optional[dict]:
        """The next job to run: a failed/unrun one, else the next span of units."""
        for job in st["jobs"]:
            if job["status"] in ("new", "failed"):
                return job
        end = st["jobs"][-1]["stop"] if st["jobs"] else 0
        if end >= st["n"]:
            return None
        size = st["per_job"] or 1
        job = {"start": end, "stop": min(st["n"], end + size), "status": "new"}
        st["jobs"].append(job)
        return job

    def _size_from(self, st, seconds: float, n_units: int) -> None:
        """After a stage's first job: units per job = half the budget / time per unit
        (shared by later calls of the same stage)."""
        if st["per_job"] is None:
            per_unit = max(seconds, 1e-3) / max(n_units, 1)
            st["per_job"] = max(1, int(0.5 * self.cfg.job_seconds / per_unit))
            self.state.setdefault("per_job", {})[st["stage"]] = st["per_job"]
            log.info("NDIF %s: %.2f s per unit; %d units per job", st["stage"], per_unit,
                     st["per_job"])

    def _backend(self, *, blocking: bool, job_id: Optional[str] = None):
        return self._Backend(self.key, self.cfg, self.env, blocking=blocking, job_id=job_id)

    def _run_blocking(self, stage, st, job, units, body) -> list[dict]:
        backend = self._backend(blocking=True)
        chunk = units[job["start"]:job["stop"]]
        try:
            results = session_job(self.model, backend, body, chunk)
        except Exception as exc:  # noqa: BLE001 - classified into one sentence
            job["status"] = "failed"
            raise classify(exc, self.cfg.host) from None
        results = _check_results(results, len(chunk))
        self.job_ids.append(backend.job_id)
        job.update(job_id=backend.job_id, status="done", seconds=backend.run_seconds)
        self._store(stage, job, results)
        self._size_from(st, backend.run_seconds or 0.0, len(chunk))
        self._save()
        return results

    def _submit(self, job, units, body) -> None:
        backend = self._backend(blocking=False)
        try:
            session_job(self.model, backend, body, units[job["start"]:job["stop"]])
        except Exception as exc:  # noqa: BLE001
            raise classify(exc, self.cfg.host) from None
        job.update(job_id=backend.job_id, status="submitted", submitted=time.time(),
                   running=None)
        self._save()

    def _collect(self, stage, st, out, bar, only: Optional[dict] = None) -> None:
        """Poll submitted jobs until every one is done (or one fails)."""
        failures = 0
        while True:
            pending = [j for j in st["jobs"] if j["status"] == "submitted"
                       and (only is None or j is only)]
            if not pending:
                return
            for job in pending:
                backend = self._backend(blocking=False, job_id=job["job_id"])
                clock = JobClock(self.cfg, job["submitted"], job.get("running"))
                try:
                    result = backend.poll()
                    failures = 0
                except Exception as exc:  # noqa: BLE001
                    err = classify(exc, self.cfg.host, f"NDIF job {job['job_id']}")
                    if err.transient:
                        failures += 1
                        if failures > self.cfg.retries:
                            raise JobError(f"{err} (while polling job {job['job_id']}; "
                                            "`headsurgeon locate --resume` collects it "
                                            "later)") from None
                        continue
                    job["status"] = "failed"
                    raise err from None
                clock.saw(backend.status)
                if job.get("running") is None and clock.running is not None:
                    job["running"] = clock.running
                    self._save()
                if result is None:
                    clock.check(job["job_id"])
                    continue
                results = _check_results(result["results"], job["stop"] - job["start"])
                clock.saw("COMPLETED")
                job.update(status="done", seconds=clock.running_seconds())
                self.job_ids.append(job["job_id"])
                self._store(stage, job, results)
                self._size_from(st, job["seconds"], job["stop"] - job["start"])
                self._fill(out, job, results)
                bar.update(job["stop"] - job["start"])
                self._save()
            if any(j["status"] == "submitted" and (only is None or j is only)
                   for j in st["jobs"]):
                time.sleep(self.cfg.poll_seconds)

    def _fill(self, out, job, results) -> None:
        out[job["start"]:job["stop"]] = results

    def _result_path(self, stage, job) -> Path:
        return self.state_dir / f"{stage}.{job['start']}-{job['stop']}.safetensors"

    def _store(self, stage, job, results) -> None:
        from safetensors.torch import save

        flat = {f"{i}/{k}": v.detach().cpu().contiguous() for i, r in enumerate(results)
                for k, v in r.items()}
        atomic_write_bytes(self._result_path(stage, job), save(flat))
        if job.get("job_id") and job["job_id"] not in self.job_ids:
            self.job_ids.append(job["job_id"])

    def _load(self, stage, job) -> list[dict]:
        from safetensors.torch import load

        flat = load(self._result_path(stage, job).read_bytes())
        results: list[dict] = [{} for _ in range(job["stop"] - job["start"])]
        for name, value in flat.items():
            i, k = name.split("/", 1)
            results[int(i)][k] = value
        if job.get("job_id") and job["job_id"] not in self.job_ids:
            self.job_ids.append(job["job_id"])
        return results

    def _save(self) -> None:
        atomic_write_json(self.state_path, self.state)
