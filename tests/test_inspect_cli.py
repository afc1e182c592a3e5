"""`headsurgeon inspect`: a NOT OK verdict exits 3 (after the report), in text and JSON;
`--against` takes what `model.source` takes (a `tiny:ARCH` alias here)."""
from __future__ import annotations

import json
import shutil
import struct

from click.testing import CliRunner

from headsurgeon.cli import cli
from headsurgeon.core.errors import EXIT_NOT_OK
from headsurgeon.model import safetensors_io as sio
from headsurgeon.model.tiny import build_tiny

MLP = "model.layers.0.mlp.down_proj.weight"


def invoke(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEADSURGEON_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(cli, ["inspect", *map(str, args)], prog_name="headsurgeon")
    return res.exit_code, res.stdout, res.stderr


def set_element(model_dir, name, index, value):
    idx = sio.read_checkpoint_index(model_dir)
    info, header = idx.info(name), idx.headers[idx[name]]
    with open(model_dir / idx[name], "r+b") as fh:
        fh.seek(header.data_start + info.begin + 4 * index)
        fh.write(struct.pack("<f", value))


def test_not_ok_exits_3_after_the_report(tmp_path, monkeypatch):
    base = build_tiny("llama", tmp_path / "base")
    edited = tmp_path / "edited"
    shutil.copytree(base, edited)
    set_element(edited, MLP, 5, 123.0)

    code, out, err = invoke(["edited", "--against", "base"], tmp_path, monkeypatch)
    assert code == EXIT_NOT_OK == 3
    assert out.splitlines()[-1] == ("outside_slices: 1 (declared slices from heads) -> "
                                    "NOT OK")
    assert f"  {MLP}: 1 elements differ, rows 0:1 cols 5:6 -> no head; outside_slices: 1" \
        in out.splitlines()
    assert err == ("error: edited: NOT OK against base: 1 element(s) outside the declared "
                   "slices\n")

    code, out, err = invoke(["edited", "--against", "base", "--json"], tmp_path, monkeypatch)
    report = json.loads(out)  # stdout is still exactly the JSON report
    assert code == 3 and report["ok"] is False and report["outside_slices"] == 1
    assert [r["tensor"] for r in report["differing"]] == [MLP]
    assert err.startswith("error: edited: NOT OK") and err.count("\n") == 1

    code, out, err = invoke(["base", "--against", "base"], tmp_path, monkeypatch)
    assert (code, err) == (0, "") and out.endswith("-> OK\n")


def test_against_accepts_a_model_source_alias(tmp_path, monkeypatch):
    """`tiny:llama` is built once into the cache (seed 0), as model.source would be."""
    build_tiny("llama", tmp_path / "mine")  # the same seed: the same bytes
    code, out, err = invoke(["mine", "--against", "tiny:llama", "--json"], tmp_path,
                            monkeypatch)
    report = json.loads(out)
    assert (code, err) == (0, ""), err
    assert report["against"] == str(tmp_path / "cache" / "tiny" / "llama")
    assert report["ok"] and report["n_compared"] == report["n_identical"] > 0

    set_element(tmp_path / "mine", MLP, 0, 7.0)
    code, out, err = invoke(["mine", "--against", "tiny:llama"], tmp_path, monkeypatch)
    assert code == 3 and err == (
        f"error: mine: NOT OK against {tmp_path / 'cache' / 'tiny' / 'llama'}: 1 element(s) "
        "outside the declared slices\n")


def test_manifest_verdict_not_ok_exits_3(tmp_path, monkeypatch):
    """Without --against: a shard that no longer matches headsurgeon.json."""
    from headsurgeon.apply.run import apply_delta
    from reliability_generators import make_delta

    base = build_tiny("llama", tmp_path / "base")
    apply_delta(base, make_delta(base, tmp_path / "d.safetensors"), tmp_path / "out",
                progress=False)
    code, out, err = invoke(["out"], tmp_path, monkeypatch)
    assert (code, err) == (0, ""), err
    set_element(tmp_path / "out", MLP, 3, 9.0)
    code, out, err = invoke(["out"], tmp_path, monkeypatch)
    assert code == 3 and "FAILED:" in out
    assert err.startswith("error: out: NOT OK: ") and err.endswith(
        " problem(s) against headsurgeon.json\n") and err.count("\n") == 1
