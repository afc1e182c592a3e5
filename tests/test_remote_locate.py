"""``headsurgeon locate --remote`` end to end against the loopback NDIF server: the same
heads.json as a local run, provenance of the scores, resume without resubmitting, and
the API key never written."""
from __future__ import annotations

import json
import math
import re

from click.testing import CliRunner

from headsurgeon.cli import cli
from ndif_server import tiny_recipe


def locate_cli(*args):
    res = CliRunner().invoke(cli, ["locate", *map(str, args)])
    return res.exit_code, res.stderr


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def numbers_close(a, b, path=""):
    """Every leaf equal, floats within 1e-4 (relative above 1); returns the mismatches."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [m for k in a for m in numbers_close(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [m for i, (x, y) in enumerate(zip(a, b)) for m in numbers_close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        # a ratio of two effects amplifies the engines' last-bit differences by 1 / its
        # (small) denominator: the looser tolerance the quoted strings already use
        rel = 1e-3 if path.endswith("/ratio") else 1e-4
        return [] if math.isclose(a, b, rel_tol=rel, abs_tol=1e-4) else [f"{path}: {a} != {b}"]
    if isinstance(a, str) and isinstance(b, str) and a != b:  # messages quoting those floats
        na, nb = NUMBER.findall(a), NUMBER.findall(b)
        same = (NUMBER.sub("#", a) == NUMBER.sub("#", b) and len(na) == len(nb) and all(
            math.isclose(float(x), float(y), rel_tol=1e-3, abs_tol=1e-4) for x, y in zip(na, nb)))
        return [] if same else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_remote_heads_json_equals_local(ndif, shared_data, tmp_path, monkeypatch):
    secret = "hs-locate-SECRET-42"
    monkeypatch.setenv("NDIF_API_KEY", secret)
    recipe = tiny_recipe(tmp_path / "r.yaml", ndif.tiny_dir, shared_data)
    local_out, remote_out = tmp_path / "local" / "heads.json", tmp_path / "remote" / "heads.json"
    code, err = locate_cli(recipe, "--local", "--out", local_out)
    assert code == 0, err
    served = ndif.served()
    code, err = locate_cli(recipe, "--out", remote_out)  # locate.remote: true
    assert code == 0, err
    local, remote = (json.loads(p.read_text()) for p in (local_out, remote_out))
    lm, rm = local.pop("model"), remote.pop("model")
    # example replies: locally greedy stops once the apology verdict is decided, a remote
    # body generates every token; the verdicts (apology rates) must agree regardless
    for doc in (local, remote):
        doc["knockout"].pop("examples")
    assert numbers_close(local, remote) == []
    assert remote["selected"] == local["selected"] and remote["ranking"] == local["ranking"]
    assert lm["backend"] == "torch-local" and rm["backend"] == "ndif"
    assert rm["id"] == "headsurgeon-test/tiny-llama" and rm["host"] == ndif.host
    assert rm["jobs"] == len(rm["job_ids"]) == ndif.served() - served > 0
    assert not remote_out.with_name("heads.json.ndif").exists()  # state removed when done
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(secret.encode() in p.read_bytes() for p in files) and secret not in err


def test_resume_collects_submitted_jobs(ndif, shared_data, tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", ndif.tiny_dir, shared_data, blocking=False,
                         wait=False)
    out = tmp_path / "heads.json"
    code, err = locate_cli(recipe, "--out", out)
    msg = err[err.find("error: "):]
    assert code == 75 and msg.count("\n") == 1 and "locate --resume" in msg, err
    assert not out.exists()
    state = json.loads((tmp_path / "heads.json.ndif" / "jobs.json").read_text())
    (first,) = [j["job_id"] for e in state["stages"].values() for j in e["jobs"]]
    ndif.wait_idle()
    served = ndif.served()
    # `wait` is how we reach NDIF, not what we compute: the submitted job is still ours
    tiny_recipe(recipe, ndif.tiny_dir, shared_data, blocking=False, wait=True)
    code, err = locate_cli(recipe, "--out", out, "--resume")
    assert code == 0, err
    model = json.loads(out.read_text())["model"]
    assert first in model["job_ids"]
    assert ndif.served() - served == model["jobs"] - 1  # collected, not resubmitted


def test_every_engine_body_runs_remotely_as_locally(ndif, tmp_path):
    """backend.py's nnsight bodies through RemoteRunner vs the local torch engine (NDIF
    freezes parameters and has no headsurgeon: gradients and code must not rely on them)."""
    import torch

    from headsurgeon.locate import backend as hb
    from headsurgeon.model.heads import HeadMap
    from headsurgeon.model.sources import load_model
    from headsurgeon.locate.remote import RemoteConfig, RemoteRunner, meta_model, model_key
    from ndif_server import TINY_REPO

    model, tok, _ = load_model(str(ndif.tiny_dir))
    hm = HeadMap.from_model(model)
    local = hb.make_engine("torch", model, hm, tokenizer=tok)
    meta = meta_model(ndif.tiny_dir)
    run = RemoteRunner(meta, RemoteConfig(host=ndif.host), model_key(TINY_REPO),
                       state_dir=tmp_path / "s", fingerprint="f", progress=False)
    remote = hb.make_engine("nnsight", meta, hm, mapper=run.map, remote=True)
    seqs = [list(range(5, 17)), list(range(30, 40))]
    cfs = [list(range(5, 15)) + [90, 91], list(range(30, 38)) + [7, 8]]
    metric = hb.MetricBatch(torch.tensor([[65, 66], [67, 68]]),
                            torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
    masks = torch.rand(5, hm.n_layers, hm.n_heads, generator=torch.Generator().manual_seed(0)) > .5
    src = torch.randn(hm.n_layers, 2, hm.n_heads * hm.head_dim)
    checks = {
        "reference": lambda e: e.reference(seqs, metric, 2).head_out,
        "attribution": lambda e: e.attribution(seqs, cfs, metric, 2)[1],
        "attribution_path": lambda e: e.attribution(seqs, cfs, metric, 2, path=True)[1],
        "patch": lambda e: e.patch(seqs, metric, 2, masks, cf_seqs=cfs),
        "path_patch": lambda e: e.patch(seqs, metric, 2, masks, cf_seqs=cfs,
                                        freeze=masks[:, :, 0]),
        "greedy": lambda e: e.greedy(seqs, 3, 2, masks[:2], src).float(),
        "stats": lambda e: e.next_token_stats(seqs)[1],
    }
    for name, fn in checks.items():
        a, b = fn(local), fn(remote)
        assert torch.allclose(a, b, atol=1e-4), (name, (a - b).abs().max())
