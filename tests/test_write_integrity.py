"""Writes that escape, destroy or lie (core/paths.py, core/atomic.py and the writers on them).

- A full disk that loses a file's tail silently (C stdio under numpy's ``tofile``): the
  GGUF exporter checks the size it meant and reads the header and tensor table back
  before the rename; a real per-file size limit (RLIMIT_FSIZE, as a full disk cuts a
  file) must give exit 1 and leave nothing.
- ``--force`` replaces only what headsurgeon wrote: never a FIFO, socket, device node or
  symlink, never a model's own weights, and no ``.NAME.old-PID`` is left behind.
- ``train`` writes its delta, ``.train.json`` and ``.loss.png`` together or not at all.
- Every shard written by apply carries its sha256 in the manifest, and ``inspect``
  without ``--against`` checks every byte; deltas carry the sha256 of their tensor bytes.

The bad-input rows of the same rules are in tests/fixtures/bad/corpus.yaml.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import reliability_corpus as rc
from headsurgeon.cli import cli
from test_reliability_disk import disk_budget

def _invoke(args, cwd: Path):
    with rc._cwd(cwd):
        res = CliRunner().invoke(cli, [str(a) for a in args], prog_name="headsurgeon",
                                 env={"HF_HUB_OFFLINE": "1", "HEADSURGEON_CACHE":
                                      str(cwd / ".cache")})
    return res.exit_code, res.stderr.strip()


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert lines and lines[-1].startswith("error: "), stderr
    return lines[-1].removeprefix("error: ")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    torch.set_num_threads(1)
    return rc.Workspace(tmp_path_factory.mktemp("integrity-models"))


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    """A model the GGUF exporter accepts (a BPE tokenizer with merges)."""
    from test_export_gguf import build_model

    return build_model("llama", tmp_path_factory.mktemp("bpe") / "llama")


# ---------------------------------------------------------------- a disk that fills up

def _export_limited(model: Path, out: Path, limit: int | None) -> subprocess.CompletedProcess:
    """``headsurgeon export`` in a child whose files may not grow past ``limit`` bytes:
    the kernel cuts writes there (EFBIG), as a full disk does, and C stdio loses what it
    still buffered without telling numpy."""
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"limit = {limit!r}\n"
            "if limit is not None:\n"
            "    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]\n"
            "    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))\n"
            "from headsurgeon.cli import main\n"
            f"sys.exit(main(['export', {str(model)!r}, '--gguf', {str(out)!r}]))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, cwd=out.parent)


def test_export_on_a_full_disk_exits_1_and_leaves_nothing(bpe_model, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "m.gguf"
    done = _export_limited(bpe_model, out, None)
    assert done.returncode == 0, done.stderr
    size = out.stat().st_size
    out.unlink()
    # cut the file a little short of its end (the tail sits in stdio's buffer) and well
    # inside it (Python's own writes fail): both are a failed export, nothing is left
    for limit in (size - 2944, size // 2):
        done = _export_limited(bpe_model, out, limit)
        assert done.returncode == 1, (limit, done.stdout, done.stderr[-2000:])
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {out}: cannot write: "), line
        assert "wrote" not in done.stdout
        assert list(disk.iterdir()) == [], limit


# ---------------------------------------------------------------- what --force may replace

def _specials(d: Path) -> dict[str, Path]:
    """A FIFO, a socket, a symlink to /dev/null and (where allowed) a character device."""
    made = {}
    os.mkfifo(d / "fifo")
    made["FIFO"] = d / "fifo"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock"))
    sock.close()
    made["socket"] = d / "sock"
    os.symlink(os.devnull, d / "link")
    made["symlink"] = d / "link"
    try:
        os.mknod(d / "chr", 0o600 | stat.S_IFCHR, os.stat(os.devnull).st_rdev)
        made["device"] = d / "chr"
    except (PermissionError, OSError):
        pass  # unprivileged: the other three still run
    return made


def _node(p: Path) -> tuple:
    st = p.lstat()
    return (stat.S_IFMT(st.st_mode), st.st_ino, st.st_rdev)


def test_force_never_replaces_a_device_fifo_socket_or_link(ws, bpe_model, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(ws.single, base)
    rc.make_delta(base, tmp_path / "d.safetensors")
    nodes = _specials(tmp_path)
    assert {"FIFO", "socket", "symlink"} <= set(nodes)
    for kind, p in nodes.items():
        before = _node(p)
        for args in (["apply", "--base", base, "--delta", "d.safetensors", "--out", p.name,
                      "--force"],
                     ["export", bpe_model, "--gguf", p.name, "--force"]):
            code, err = _invoke(args, tmp_path)
            assert code == 2, (kind, args[0], err)
            assert _one_line(err).startswith(f"{p if args[0] == 'apply' else p.name}: "
                                             f"is a {kind}; headsurgeon never replaces one")
            assert _node(p) == before, (kind, args[0])
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert [n for n in leftovers if n != ".cache"] == []  # no .NAME.old-PID, no partial


def test_export_force_never_replaces_the_models_own_weights(bpe_model, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(bpe_model, model)
    weights = (model / "model.safetensors").read_bytes()
    code, err = _invoke(["export", model, "--gguf", model / "model.safetensors", "--force"],
                        tmp_path)
    assert code == 2 and "is not a GGUF file written by headsurgeon" in _one_line(err)
    assert (model / "model.safetensors").read_bytes() == weights
    # its own earlier export is what --force replaces, and nothing is left beside it
    gguf = model / "m.gguf"
    assert _invoke(["export", model, "--gguf", gguf], tmp_path)[0] == 0
    assert _invoke(["export", model, "--gguf", gguf, "--force"], tmp_path)[0] == 0
    assert sorted(p.name for p in model.iterdir() if p.name.startswith(".")) == []


def test_apply_force_replaces_its_own_output_in_one_step(ws, tmp_path):
    """The old output is swapped out whole and removed: no ``.out.old-PID``."""
    base = tmp_path / "base"
    shutil.copytree(ws.sharded, base)
    rc.make_delta(base, tmp_path / "d.safetensors")
    args = ["apply", "--base", base, "--delta", "d.safetensors", "--out", "out"]
    assert _invoke(args, tmp_path)[0] == 0
    (tmp_path / "out" / "marker").write_text("old")
    assert _invoke(args + ["--force"], tmp_path)[0] == 0
    assert not (tmp_path / "out" / "marker").exists()
    assert sorted(p.name for p in tmp_path.iterdir()
                  if p.name.startswith(".") and p.name != ".cache") == []


# ---------------------------------------------------------------- train: all or nothing

def _train_recipe(tmp_path: Path, ws) -> None:
    (tmp_path / "r.yaml").write_text(
        f"name: full\nmodel: {{source: {ws.single}}}\nheads: [[0, 1]]\n"
        "data:\n  train: [{name: builtin, set: arithmetic, split: train, n: 8}]\n"
        "train: {steps: 2, batch_size: 2, n_examples: 4, checkpoint_every: 0}\n"
        "output_dir: disk/run\n")


def test_train_on_a_full_disk_writes_the_delta_and_its_log_together(ws, tmp_path):
    _train_recipe(tmp_path, ws)
    (tmp_path / "disk").mkdir()
    run = tmp_path / "disk" / "run"
    with disk_budget(tmp_path / "disk", float("inf")) as st:
        code, err = _invoke(["train", "r.yaml"], tmp_path)
    assert code == 0, err
    total = st["written"]
    sizes = {p.name: p.stat().st_size for p in run.iterdir()}
    assert {"delta.safetensors", "delta.train.json", "delta.loss.png"} <= set(sizes)
    shutil.rmtree(run)
    # the disk fills inside the delta; after a complete delta, inside its log (the
    # report's case); early. Margins of hundreds of bytes: the log's timings vary a little
    for budget in (total - sizes["delta.safetensors"] // 2,
                   total - sizes["delta.loss.png"] - sizes["delta.train.json"] // 2,
                   total // 2):
        with disk_budget(tmp_path / "disk", budget):
            code, err = _invoke(["train", "r.yaml"], tmp_path)
        assert code == 1, (budget, err[-2000:])
        assert _one_line(err).endswith("cannot write: No space left on device"), err
        names = {p.name for p in run.iterdir()} if run.exists() else set()
        assert not names & {"delta.safetensors", "delta.train.json", "delta.loss.png"}, \
            (budget, names)
        assert not [n for n in names if n.startswith(".")], names
        shutil.rmtree(run, ignore_errors=True)


# ---------------------------------------------------------------- the one verified writer

def test_a_short_write_is_caught_before_the_rename(tmp_path, monkeypatch):
    """A writer that loses the last byte without an error (what a full disk can do under
    a buffered layer): the read-back check fails the write and nothing is published."""
    from headsurgeon.core import atomic
    from headsurgeon.core.errors import RuntimeFailure

    real = atomic.write_all
    monkeypatch.setattr(atomic, "write_all", lambda fd, data: real(fd, bytes(data)[:-1]))
    target = tmp_path / "metrics.json"
    target.write_text("{}\n")
    with pytest.raises(RuntimeFailure, match="cannot write: 9 of 10 bytes written"):
        atomic.atomic_write_bytes(target, b"0123456789")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert target.read_text() == "{}\n"


# ---------------------------------------------------------------- hashes of every byte

def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


def test_manifest_hashes_every_shard_and_inspect_checks_every_byte(ws, tmp_path):
    from headsurgeon.apply.inspect import inspect_checkpoint
    from headsurgeon.model import safetensors_io as sio

    base = tmp_path / "base"
    shutil.copytree(ws.sharded, base)
    rc.make_delta(base, tmp_path / "d.safetensors")
    out = tmp_path / "out"
    assert _invoke(["apply", "--base", base, "--delta", "d.safetensors", "--out", out],
                   tmp_path)[0] == 0
    man = json.loads((out / "headsurgeon.json").read_text())
    for shard, rec in man["files"].items():
        assert rec["sha256"] == sio.file_sha256(out / shard), shard
    assert man["other_sha256"]["config.json"] == sio.file_sha256(out / "config.json")
    assert inspect_checkpoint(out)["ok"]
    idx = sio.read_checkpoint_index(out)
    touched = set(man["touched"])
    rewritten = next(s for s, r in man["files"].items() if r["rewritten"])
    copied = next(s for s, r in man["files"].items() if not r["rewritten"])
    for shard in (rewritten, copied):  # an untouched tensor's byte, in either kind of shard
        name = next(n for n in idx.headers[shard].tensors if n not in touched)
        h = idx.headers[shard]
        at = h.data_start + h.tensors[name].begin
        saved = (out / shard).read_bytes()
        _flip(out / shard, at)
        rep = inspect_checkpoint(out)
        assert not rep["ok"] and rep["problems"] == [
            f"{shard}: sha256 differs from the manifest"], rep["problems"]
        (out / shard).write_bytes(saved)
    (out / "config.json").write_text((out / "config.json").read_text().replace("4", "5", 1))
    assert inspect_checkpoint(out)["problems"] == ["config.json: sha256 differs from the manifest"]


def test_delta_carries_the_sha256_of_its_tensor_bytes(ws, tmp_path):
    from headsurgeon.core.errors import CheckpointError
    from headsurgeon.model.delta import read_delta

    p = rc.make_delta(ws.single, tmp_path / "d.safetensors")
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    assert meta["tensors_sha256"] == hashlib.sha256(raw[8 + n:]).hexdigest()
    assert read_delta(p).meta["tensors_sha256"] == meta["tensors_sha256"]
    _flip(p, len(raw) - 5)
    with pytest.raises(CheckpointError, match="tensor bytes do not match their sha256"):
        read_delta(p)
