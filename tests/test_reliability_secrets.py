"""Secrets: with NDIF_API_KEY and HF_TOKEN set to sentinels, the whole pipeline (the
tiny smoke recipe) and several error paths leave them in no file, log, report or
message. Runs in forked children whose stdout/stderr (file descriptors 1 and 2, so
logging and C-level writes too) go to log files that are searched like every output."""
from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from kill_harness import ROOT, ForkServer

SECRETS = {"NDIF_API_KEY": "ndif-SENTINEL-7f3a9c", "HF_TOKEN": "hf_SENTINELtoken9b2e"}


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode(), value.encode("utf-16-le")]


def _leaks(root: Path, inputs: tuple[str, ...] = ()) -> list[str]:
    """Every file under ``root`` but the named inputs that holds a secret, in any of a few
    encodings."""
    found = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name not in inputs:
            data = p.read_bytes()
            for name, value in SECRETS.items():
                if any(form in data for form in _forms(value)):
                    found.append(f"{name} in {p.relative_to(root)}")
    return found


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from headsurgeon.model.tiny import build_tiny

    root = tmp_path_factory.mktemp("secrets")
    build_tiny("llama", root / "tiny-llama")
    shutil.copy(ROOT / "recipes" / "tiny-smoke.yaml", root / "tiny-smoke.yaml")
    server = ForkServer({**SECRETS, "HEADSURGEON_CACHE": str(root / "cache"),
                         "HF_HOME": str(root / "hf"), "HEADSURGEON_DEBUG": ""})
    yield root, server
    server.close()


def test_pipeline_writes_no_secret(pipeline):
    root, server = pipeline
    code, _ = server.run(["run", "tiny-smoke.yaml"], root, root / "run.log")
    assert code == 0, (root / "run.log").read_text()[-3000:]
    run = root / "runs" / "tiny-smoke"
    for name in ("heads.json", "delta.safetensors", "model/model.safetensors",
                 "model/README.md", "metrics.json", "report.md", "report.html"):
        assert (run / name).is_file(), name  # the search below covers real outputs
    assert len([p for p in root.rglob("*") if p.is_file()]) > 20
    assert _leaks(root) == []


@pytest.mark.parametrize("case, recipe, needle", [
    ("secret-var-in-source", "model: {source: $HF_TOKEN}\n", "refusing to expand $HF_TOKEN"),
    ("secret-var-in-data", "model: {source: ./tiny-llama}\nheads: [[0, 1]]\n"
     "data: {train: [{name: jsonl, path: '${NDIF_API_KEY}/q.jsonl'}]}\n",
     "refusing to expand $NDIF_API_KEY"),
    # the secret's value written literally in a recipe: the message is redacted
    ("literal-value", f"model: {{source: ./{SECRETS['HF_TOKEN']}}}\n", "model.source: ./***"),
    ("unreachable-ndif", "model: {source: ./tiny-llama, remote_id: org/tiny}\n"
     "data: {locate: [{name: builtin, set: arithmetic, split: locate, n: 4}]}\n"
     "locate: {remote: true, n_probes: 4, ndif: {host: 'http://127.0.0.1:9', retries: 0}}\n",
     "127.0.0.1:9"),
])
def test_error_paths_print_no_secret(pipeline, case, recipe, needle):
    root, server = pipeline
    d = root / "errors" / case
    d.mkdir(parents=True)
    (d / "tiny-llama").symlink_to(root / "tiny-llama")
    (d / "r.yaml").write_text(recipe)
    cmd = "locate" if case == "unreachable-ndif" else "train" if "data" in case else "validate"
    code, _ = server.run([cmd, "r.yaml"], d, d / "err.log")
    log = (d / "err.log").read_text()
    last = log.strip().splitlines()[-1]
    assert code in (1, 2) and last.startswith("error: ") and needle in last, log[-2000:]
    assert _leaks(d, inputs=("r.yaml",)) == [], log[-2000:]


def test_the_search_finds_a_planted_secret(tmp_path):
    """The leak search can fail: a sentinel hidden in base64 inside a file is found."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.html").write_bytes(b"<img src=data:," +
                                            base64.b64encode(SECRETS["HF_TOKEN"].encode()) + b">")
    assert _leaks(tmp_path) == ["HF_TOKEN in a/x.html"]


def test_which_variables_are_secrets(monkeypatch):
    from headsurgeon.core.inputs import expand_path, is_secret_name, redact

    assert all(map(is_secret_name, ["HF_TOKEN", "NDIF_API_KEY", "GITHUB_TOKEN",
                                    "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD"]))
    assert not any(map(is_secret_name, ["TOKENIZERS_PARALLELISM", "HOME", "AUTHOR",
                                        "HEADSURGEON_SHARED_DATA"]))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("MODELS", "/data/models")
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    assert redact(f"x {SECRETS['HF_TOKEN']} false") == "x *** false"
    assert expand_path("$MODELS/llama") == "/data/models/llama"
    with pytest.raises(Exception, match=r"refusing to expand \$HF_TOKEN"):
        expand_path("${HF_TOKEN}/x")
