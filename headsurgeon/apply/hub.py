"""Push a model directory and its card (``README.md``) to the Hugging Face Hub.

One commit through ``huggingface_hub`` (``create_repo`` + ``create_commit``) with exactly the
files the plan lists; ``dry_run`` builds the same plan and sends nothing. The endpoint is
``HF_ENDPOINT`` (read when the push starts) or the library's default. The token comes only
from ``HF_TOKEN`` or ``huggingface_hub``'s own login; it is handed to the library for that
one endpoint and is never printed, logged or written. Both calls have connect and read
timeouts and a bounded retry (:mod:`headsurgeon.core.net`); the commit is retried only when
no connection was made, never after it may have landed.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from headsurgeon.core.errors import RuntimeFailure, ValidationError

CARD = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


@dataclass(frozen=True)
class PlannedFile:
    path: str    # path in the repo (posix, relative)
    size: int
    sha256: str  # hex, of the bytes as they will be sent


@dataclass
class PushPlan:
    repo_id: str
    endpoint: str
    private: bool
    files: list[PlannedFile]
    operations: list  # huggingface_hub.CommitOperationAdd, one per file, in the same order
    lora: dict | None = None  # a LoRA adapter's size and its full checkpoint's (push --lora)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def url(self) -> str:
        return f"{self.endpoint.rstrip('/')}/{self.repo_id}"

    def summary(self) -> dict:
        out = {"repo": self.repo_id, "endpoint": self.endpoint, "url": self.url,
               "private": self.private, "bytes": self.total_bytes,
               "files": [f.__dict__ for f in self.files]}
        return out | ({"lora": self.lora} if self.lora else {})


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _model_files(model_dir: Path) -> list[Path]:
    """Every regular file under ``model_dir`` except hidden ones (temporaries, caches)."""
    files = []
    for root, dirs, names in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if name.startswith("."):
                continue
            if path.is_symlink() or not path.is_file():
                raise ValidationError("not a regular file; push sends regular files only",
                                      file=str(path))
            files.append(path)
    return files


def _check_model_dir(model_dir: Path) -> None:
    from headsurgeon.model.safetensors_io import read_checkpoint_index

    if not (model_dir.is_dir() and (model_dir / "config.json").is_file()):
        hint = "; it is a LoRA adapter: pass --lora" if (
            model_dir / "adapter_config.json").is_file() else ""
        raise ValidationError(f"not a model directory (no config.json){hint}",
                              file=str(model_dir))
    if not (model_dir / CARD).is_file():
        raise ValidationError(f"no model card ({CARD}); `headsurgeon apply` writes one",
                              file=str(model_dir))
    read_checkpoint_index(model_dir)  # every shard header valid before anything is sent


def plan_push(model_dir: str | os.PathLike, repo_id: str, *, private: bool = False,
              lora: bool = False) -> PushPlan:
    """What a push would send: the repo, the endpoint and each file's path, size, sha256.
    ``lora``: ``model_dir`` is a LoRA adapter directory (``export --lora``)."""
    from headsurgeon.apply.export_lora import check_adapter_dir

    from huggingface_hub import CommitOperationAdd

    model_dir = Path(model_dir)
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ValidationError(f"{repo_id!r} is not a Hub repo id (ORG/NAME)", field="--repo")
    sizes = check_adapter_dir(model_dir) if lora else _check_model_dir(model_dir)
    ops, files = [], []
    for path in _model_files(model_dir):
        rel = path.relative_to(model_dir).as_posix()
        op = CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path))
        ops.append(op)
        files.append(PlannedFile(rel, op.upload_info.size, op.upload_info.sha256.hex()))
    return PushPlan(repo_id, endpoint(), private, files, ops, sizes)


def token_source() -> str | None:
    """Where the token would come from ("HF_TOKEN", "login") or None; never the value."""
    from huggingface_hub import get_token

    if os.environ.get("HF_TOKEN"):
        return "HF_TOKEN"
    return "login" if get_token() else None


def push(plan: PushPlan, *, commit_message: str | None = None) -> str:
    """Send ``plan`` as one commit; returns the commit URL. The token stays in the library."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise ValidationError("HF_HUB_OFFLINE is set; unset it to push", field="--repo")
    if token_source() is None:
        raise ValidationError("no Hugging Face token: set HF_TOKEN or run `hf auth login`",
                              field="--repo")
    from headsurgeon.core.net import NetPolicy, call

    api = HfApi(endpoint=plan.endpoint)  # token=None: HF_TOKEN or the stored login
    policy = NetPolicy.from_env()
    try:
        with _timeouts(policy):
            call(plan.endpoint, f"create repo {plan.repo_id}", policy=policy, fn=lambda: (
                api.create_repo(plan.repo_id, private=plan.private, exist_ok=True,
                                repo_type="model")))
            info = call(plan.endpoint, f"commit {len(plan.files)} files", policy=policy,
                        retry_no_answer=False, fn=lambda: api.create_commit(
                            plan.repo_id, operations=plan.operations, repo_type="model",
                            commit_message=commit_message or "Upload headsurgeon model"))
    except Exception as exc:  # noqa: BLE001 - HTTP and Hub errors: one line, no token in it
        from headsurgeon.core.inputs import redact

        first = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeFailure(f"push to {plan.url} failed: {redact(first)}") from None
    return str(getattr(info, "commit_url", "") or plan.url)


@contextlib.contextmanager
def _timeouts(policy):
    """``huggingface_hub``'s shared HTTP client with connect/read timeouts (its default is
    none: a server that accepts and never answers would be waited for forever)."""
    from huggingface_hub import get_session

    client = get_session()
    if hasattr(client, "timeout"):  # httpx-style client (huggingface_hub >= 1.0)
        saved = client.timeout
        client.timeout = type(saved)(policy.read, connect=policy.connect)
        try:
            yield
        finally:
            client.timeout = saved
        return
    send = client.request  # requests.Session: no default timeout, so give every request one

    def timed(*args, **kwargs):
        kwargs.setdefault("timeout", (policy.connect, policy.read))
        return send(*args, **kwargs)

    client.request = timed
    try:
        yield
    finally:
        del client.request


def format_push(summary: dict) -> str:
    """The plan (and the commit, once sent) as text: one ``sha256  size  path`` line a file."""
    head = "would push" if summary["dry_run"] else "pushed"
    lines = [f"{head} {len(summary['files'])} files ({summary['bytes']} bytes) to "
             f"{summary['url']} ({'private' if summary['private'] else 'public'} model repo)",
             f"endpoint: {summary['endpoint']}",
             "token: " + ({"HF_TOKEN": "from HF_TOKEN", "login": "from the stored login"}.get(
                 summary["token"]) or "none found (set HF_TOKEN or run `hf auth login`)")]
    if summary.get("lora"):
        lora = summary["lora"]
        lines.append(f"LoRA adapter: {lora['adapter_bytes']} bytes of weights; the full "
                     f"checkpoint: {lora['checkpoint_bytes']} bytes")
    lines += [f"{f['sha256']}  {f['size']:>12}  {f['path']}" for f in summary["files"]]
    if summary.get("commit"):
        lines.append(f"commit: {summary['commit']}")
    return "\n".join(lines)
