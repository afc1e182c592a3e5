"""headsurgeon.locate.remote without a server: configuration, key handling, safe result loading,
offline model files. (The server-backed tests are in test_remote_server.py.)"""
from __future__ import annotations

import io
import json
import pickle

import pytest
import torch

from headsurgeon.locate import remote
from headsurgeon.locate import remote_client
from headsurgeon.core.errors import ValidationError
from headsurgeon.model.config import config_dir
from headsurgeon.core.recipe import recipe_from_data
from headsurgeon.core.yamlfile import load_yaml_text


def recipe(extra: str = ""):
    text = "model: {source: x, remote_id: org/m}\nlocate:\n  remote: true\n" + extra
    data, lines = load_yaml_text(text, "r.yaml")
    return recipe_from_data(data, file="r.yaml", lines=lines, text=text, check_plugins=False)


def test_host_precedence_and_key_from_env_only(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "HOST", "https://configured.example")
    monkeypatch.setattr(CONFIG.API, "APIKEY", "key-from-nnsight-config-file")
    monkeypatch.delenv("NDIF_HOST", raising=False)
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    cfg = remote.RemoteConfig.from_recipe(recipe())
    assert cfg.host == "https://configured.example" and cfg.api_key == ""
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:9/")
    monkeypatch.setenv("NDIF_API_KEY", "s3cr3t-key")
    cfg = remote.RemoteConfig.from_recipe(recipe())
    assert cfg.host == "http://127.0.0.1:9" and cfg.api_key == "s3cr3t-key"
    assert "s3cr3t" not in repr(cfg)
    cfg = remote.RemoteConfig.from_recipe(recipe(
        "  ndif: {host: 'https://u:pw@ndif.example:8443', job_seconds: 60, retries: 0}\n"))
    assert (cfg.host, cfg.job_seconds, cfg.retries) == ("https://u:pw@ndif.example:8443", 60, 0)
    assert cfg.public_host == "https://ndif.example:8443"
    assert cfg.redact("x https://u:pw@ndif.example:8443 s3cr3t-key y") == \
        "x https://ndif.example:8443 *** y"
    with pytest.raises(ValidationError, match="locate.ndif.job_seconds"):
        recipe("  ndif: {job_seconds: 0}\n")
    with pytest.raises(ValidationError, match="locate.ndif.host: must start with http"):
        recipe("  ndif: {host: ndif.example}\n")


def test_backend_uses_env_key_not_nnsight_config(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", "key-from-nnsight-config-file")
    cfg = remote.RemoteConfig(host="http://127.0.0.1:9", api_key="")
    backend = remote_client.backend_class()(remote.model_key("org/m"), cfg, {}, blocking=True)
    assert backend.api_key == "" and backend.display.enabled is False


def test_model_key_round_trips_through_nnsight():
    key = remote.model_key("meta-llama/Llama-3.1-70B-Instruct")
    cls_path, suffix = key.split(":", 1)
    from nnsight.modeling.mixins.remotable import from_import_path

    assert from_import_path(cls_path).__name__ == "TransformersModel"
    assert json.loads(suffix) == {"repo_id": "meta-llama/Llama-3.1-70B-Instruct",
                                  "revision": None, "task": "text-generation"}


def test_envelope_loader_refuses_anything_but_status():
    from nnsight.schema.response import ResponseModel, Status

    good = ResponseModel(id="j1", status=Status.COMPLETED, data=b"blob", meta={"x": 1.5})
    env = remote_client._load_envelope(good.pickle())
    assert env == {"id": "j1", "status": Status.COMPLETED, "data": b"blob", "meta": {"x": 1.5}}

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"id": "j", "status": Evil()}, buf, pickle_protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="refused builtins.print"):
        remote_client._load_envelope(buf.getvalue())
    buf = io.BytesIO()
    torch.save({"id": "j", "data": torch.ones(2)}, buf)
    with pytest.raises(pickle.UnpicklingError):
        remote_client._load_envelope(buf.getvalue())


def test_server_summary_is_one_line():
    tb = ('Traceback (most recent call last):\n  File "x.py", line 3, in f\n    g()\n'
          'RuntimeError: boom happened\n')
    assert remote_client._server_summary(tb) == "RuntimeError: boom happened"
    assert remote_client._server_summary("Your job exceeded the execution timeout of 5s.") == \
        "Your job exceeded the execution timeout of 5s."
    assert remote_client._server_summary("") == "no error description"


def test_digest_is_stable_and_content_sensitive():
    a = [{"ids": torch.arange(4)}, "x", 3]
    assert remote._digest(a) == remote._digest([{"ids": torch.arange(4)}, "x", 3])
    assert remote._digest(a) != remote._digest([{"ids": torch.arange(1, 5)}, "x", 3])


def test_config_dir_offline_from_hub_cache_without_weights(tmp_path, monkeypatch):
    """A Hub id whose config + tokenizer (no weights) are in the local HF cache."""
    from headsurgeon.model.tiny import build_tiny

    src = build_tiny("llama", tmp_path / "src")
    snap = tmp_path / "hub" / "models--org--big" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (snap / f.name).write_bytes(f.read_bytes())
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = config_dir("org/big")
    assert path == snap
    model = remote.meta_model(path)
    assert next(model._module.parameters()).device.type == "meta"
    assert model._remoteable_get_env()["attn_implementation"] == "eager"
    with pytest.raises(ValidationError, match="huggingface-cli download org/other"):
        config_dir("org/other")


def test_fingerprint_ignores_how_ndif_is_reached_only():
    base = remote.fingerprint(recipe())
    assert remote.fingerprint(recipe("  ndif: {wait: false, job_seconds: 5, retries: 0}\n")) \
        == base
    assert remote.fingerprint(recipe("  n_probes: 7\n")) != base
    assert remote.fingerprint(recipe("  method: {name: attribution, approximates: "
                                     "path_patching}\n")) != base


def test_ndif_recipe_is_ready(monkeypatch, tmp_path):
    from headsurgeon.core.recipe import load_recipe
    from conftest import ROOT

    r = load_recipe(ROOT / "recipes" / "llama-3.1-70b-ndif.yaml")  # schema + every plugin
    assert r.locate.remote and r.model.remote_id == "meta-llama/Llama-3.1-70B-Instruct"
    assert r.model.source == r.model.remote_id and r.locate.ndif.job_seconds <= 3600
    assert remote.model_key(r.model.remote_id).endswith(
        '{"repo_id": "meta-llama/Llama-3.1-70B-Instruct", "revision": null, '
        '"task": "text-generation"}')
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached: says what to fetch
    with pytest.raises(ValidationError, match="huggingface-cli download meta-llama/Llama-3.1"):
        config_dir(r.model.source)
