"""`headsurgeon train` on bad input: one line, exit 2, nothing overwritten; and
`accelerate launch` with two CPU processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headsurgeon.core import recipe as recipe_mod
from headsurgeon.cli import main
from headsurgeon.train.run import train

from train_helpers import available_plugin_fields, load, recipe_text, write_questions

ROOT = Path(__file__).resolve().parents[1]
ALL_FIELDS = list(recipe_mod.PLUGIN_FIELDS)


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.setattr(recipe_mod, "PLUGIN_FIELDS", available_plugin_fields())
    torch.set_num_threads(1)


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


@pytest.mark.parametrize("case,needle", [
    ("heads_outside", "outside the model"),
    ("empty_data", "contains no questions"),
    ("overlap", "overlap"),
    ("kv_policy", "kv policy 'own'"),
    ("other_recipe", "another recipe"),
])
def test_bad_input_exits_2_and_writes_nothing(case, needle, tmp_path, tiny_dirs, capsys):
    data = write_questions(tmp_path / "train.jsonl", 12)
    kw = {}
    if case == "heads_outside":
        kw["heads"] = "[[0, 1], [3, 0]]"  # tiny llama has 3 layers
    elif case == "empty_data":
        data = tmp_path / "empty.jsonl"
        data.write_text("\n")
    elif case == "overlap":
        held = write_questions(tmp_path / "eval.jsonl", 3, offset=10)
        kw["extra_data"] = f"  eval: [{{name: jsonl, path: {held}}}]"
    elif case == "kv_policy":
        kw["extra_train"] = "kv: own"  # GQA: 4 query heads share 2 KV heads
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(tiny_dirs["llama"], data, **kw))
    out = tmp_path / "delta.safetensors"
    if case == "other_recipe":
        first = tmp_path / "first.yaml"
        first.write_text(recipe_text(tiny_dirs["llama"], data,
                                     extra_train="checkpoint_every: 1\nseed: 7"))
        train(load(first), out, stop_after=1, progress=False)
    out.write_bytes(b"previous output")
    capsys.readouterr()
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    args = ["train", str(path), "--out", str(out)] + (["--resume"] if case == "other_recipe"
                                                      else [])
    code, err = run_cli(args, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert str(path) in err or str(tmp_path) in err          # names the file
    after = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before


def test_cli_writes_delta(tmp_path, tiny_dirs, capsys):
    data = write_questions(tmp_path / "train.jsonl", 12)
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(tiny_dirs["llama"], data, out_dir=tmp_path / "run"))
    main_ok = None
    try:
        main(["train", str(path)])
    except SystemExit as exc:
        main_ok = exc.code
    assert main_ok in (None, 0)
    assert (tmp_path / "run" / "delta.safetensors").is_file()
    assert "wrote" in capsys.readouterr().out


def test_accelerate_launch_two_cpu_processes(tmp_path, tiny_dirs):
    """Two CPU processes (gloo DDP): one delta, written once, trained on both shards.
    accelerate's own ``--cpu`` multi-process path needs MPI; ``--multi_gpu`` starts the
    processes with torchrun and the trainer's ``Accelerator(cpu=True)`` joins them by gloo."""
    data = write_questions(tmp_path / "train.jsonl", 16)
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(tiny_dirs["llama"], data, out_dir=tmp_path / "run"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "tests"))
    if available_plugin_fields() == ALL_FIELDS:
        target = ["-m", "headsurgeon"]   # the documented command
    else:  # a partial checkout: other stages' default plugins are not installed yet
        launcher = tmp_path / "launch.py"
        launcher.write_text("import sys; from train_helpers import available_plugin_fields as f; "
                            "from headsurgeon import recipe as r; r.PLUGIN_FIELDS = f(); "
                            "from headsurgeon.cli import main; main(sys.argv[1:])")
        target = [str(launcher)]
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                           "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no",
                           *target, "train", str(path)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = json.loads((tmp_path / "run" / "delta.train.json").read_text())
    assert log["num_processes"] == 2 and len(log["history"]) == 4
    from headsurgeon.model.delta import read_delta

    d = read_delta(tmp_path / "run" / "delta.safetensors")
    assert all(s.value.abs().max() > 0 for s in d.slices)
