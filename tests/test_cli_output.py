"""The CLI in scripts and logs: `--help`/`--version` import no torch, transformers or
plugin; off a terminal progress is whole lines at step intervals (no carriage return, no
ANSI code); `--quiet` leaves the final lines; `NO_COLOR` strips transformers' colours."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from headsurgeon.core import plugins, progress
from headsurgeon.core.progress import LineBar, progress_bar

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "headsurgeon_plugins")
PROBE = ("import json, sys\nfrom headsurgeon.cli import main\ncode = 0\n"
         "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
         "print('PROBE ' + json.dumps({'code': code, 'heavy': sorted(m for m in %r "
         "if m in sys.modules)}))\n" % (HEAVY,))


class TTY(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def normal_output(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    progress.configure()
    yield
    progress.configure()


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HEADSURGEON_PLUGINS", "TQDM_DISABLE", "NO_COLOR",
                        "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _probe(args, env=None) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          env=env or _env(), timeout=120)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE "))
    return json.loads(line[6:]), proc.stdout


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["validate", "--help"],
                                  ["run", "--help"], ["train", "-h"]])
def test_help_and_version_import_no_torch_transformers_or_plugins(args):
    result, out = _probe(args)
    assert result == {"code": 0, "heavy": []}, out
    assert ("headsurgeon, version" in out) if args == ["--version"] else ("Usage:" in out)


def test_plugin_commands_are_listed_without_loading_the_builtins(tmp_path):
    """A third-party entry point's command shows in `--help` (which loads no built-in and no
    torch) and runs."""
    dist = tmp_path / "hs_hello-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hs-hello\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[headsurgeon]\nhello = hs_hello\n")
    (tmp_path / "hs_hello.py").write_text(
        "import click\nfrom headsurgeon import hookimpl\n\n\n@hookimpl\n"
        "def register_commands(cli):\n    @cli.command()\n    def hello():\n"
        "        \"\"\"Greet from a plugin.\"\"\"\n        click.echo('hello from a plugin')\n")
    env = _env(PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    result, out = _probe(["--help"], env)
    assert result == {"code": 0, "heavy": []}, out
    assert re.search(r"^  hello +Greet from a plugin\.$", out, re.M), out
    result, out = _probe(["hello"], env)
    assert result["code"] == 0 and "hello from a plugin" in out


def test_builtin_plugins_add_no_commands():
    """`--help` lists commands from the third-party entry points only: true while no
    built-in plugin implements `register_commands`."""
    plugins.load_plugins()
    owners = [impl.plugin_name for impl in plugins.pm.hook.register_commands.get_hookimpls()]
    assert not [o for o in owners if o.startswith("builtin-")], owners


def _ticking(step_seconds: float):
    now = [0.0]

    def tick():
        now[0] += step_seconds

    return (lambda: now[0]), tick


def _counts(text: str, desc: str) -> list[int]:
    return [int(m) for m in re.findall(rf"^{re.escape(desc)}: (\d+)", text, re.M)]


@pytest.mark.parametrize("seconds,shown", [
    (1.0, [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]),  # every tenth step
    (0.125, [40, 80, 100]),  # tenths closer than MIN_SECONDS (5 s) are skipped; the end shows
])
def test_line_bar_prints_whole_lines_at_step_intervals(seconds, shown):
    clock, tick = _ticking(seconds)
    out = io.StringIO()
    bar = LineBar(total=100, desc="challenge", unit="item", stream=out, clock=clock)
    for _ in range(100):
        tick()
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert _counts(text, "challenge") == shown
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines()[-1] == f"challenge: 100/100 items (100%) {100 * seconds:.1f}s"


def test_verbose_shows_every_interval_and_postfix():
    progress.configure(verbose=True)
    out = io.StringIO()
    bar = progress_bar(range(20), desc="train sft", file=out)
    assert isinstance(bar, LineBar)
    for step in bar:
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
    lines = out.getvalue().splitlines()
    assert _counts(out.getvalue(), "train sft") == list(range(2, 21, 2))
    assert lines[0].startswith("train sft: 2/20 (10%) ") and lines[0].endswith(" loss=0.500")


@pytest.mark.parametrize("how", ["quiet", "TQDM_DISABLE", "disable"])
def test_bars_can_be_silenced(how, monkeypatch):
    if how == "quiet":
        progress.configure(quiet=True)
    elif how == "TQDM_DISABLE":
        monkeypatch.setenv("TQDM_DISABLE", "1")
    for stream in (io.StringIO(), TTY()):
        with progress_bar(total=5, desc="x", file=stream, disable=how == "disable") as bar:
            bar.update(5)
        assert stream.getvalue() == ""


def test_a_terminal_gets_tqdm(monkeypatch):
    from tqdm import tqdm

    monkeypatch.setenv("NO_COLOR", "1")  # colours only: a terminal keeps its live bar
    with progress_bar(total=3, desc="x", file=TTY()) as bar:
        assert isinstance(bar, tqdm)


def test_notes_are_hidden_by_quiet(capsys):
    progress.progress_note("[eval] base: tiny")
    progress.progress_note("[locate] running", err=False)
    assert capsys.readouterr() == ("[locate] running\n", "[eval] base: tiny\n")
    progress.configure(quiet=True)
    progress.progress_note("[eval] base: tiny")
    assert capsys.readouterr() == ("", "")


def test_transformers_verbosity_follows_quiet_and_verbose():
    from transformers.utils import logging as tf_logging

    before = tf_logging.get_verbosity()
    progress.configure(verbose=True)
    assert tf_logging.get_verbosity() == logging.INFO
    progress.configure(quiet=True)
    assert tf_logging.get_verbosity() == logging.ERROR
    progress.configure()
    assert tf_logging.get_verbosity() == before


def _log_report(monkeypatch, stderr) -> str:
    """What transformers' coloured load-report record says once made."""
    monkeypatch.setattr(sys, "stderr", stderr)
    progress.configure()
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("transformers.utils.loading_report")
    log.addHandler(handler)
    try:
        log.error("\x1b[1mLlamaForCausalLM LOAD REPORT\x1b[0m from: %s", "x")
    finally:
        log.removeHandler(handler)
    return seen[0]


def test_no_color_or_no_terminal_strips_transformers_colours(monkeypatch):
    assert _log_report(monkeypatch, io.StringIO()) == "LlamaForCausalLM LOAD REPORT from: x"
    assert "\x1b[1m" in _log_report(monkeypatch, TTY())
    monkeypatch.setenv("NO_COLOR", "1")
    assert _log_report(monkeypatch, TTY()) == "LlamaForCausalLM LOAD REPORT from: x"


LOAD = ("import sys\nfrom headsurgeon.core.progress import configure\nconfigure()\n"
        "from transformers import AutoModelForCausalLM\n"
        "AutoModelForCausalLM.from_pretrained(sys.argv[1])\n")


def test_the_real_load_report_reaches_a_log_file_without_colours(tmp_path, tiny_dirs,
                                                                  monkeypatch):
    """A checkpoint missing a tensor makes transformers log its load report, coloured even
    into a file; under the CLI's output settings a log file gets plain text."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as tf_logging

    model = tmp_path / "model"
    shutil.copytree(tiny_dirs["llama"], model)
    weights = load_file(model / "model.safetensors")
    weights.pop("model.norm.weight")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log, level = logging.getLogger("transformers"), tf_logging.get_verbosity()
    log.addHandler(handler)
    monkeypatch.setattr(sys, "stderr", TTY())
    tf_logging.set_verbosity_warning()
    try:
        AutoModelForCausalLM.from_pretrained(model)
    finally:
        log.removeHandler(handler)
        tf_logging.set_verbosity(level)
    assert any("LOAD REPORT" in m and "\x1b[" in m for m in seen), seen  # coloured, as said

    with open(tmp_path / "load.err", "wb") as err:
        subprocess.run([sys.executable, "-c", LOAD, str(model)], stdout=err, stderr=err,
                       env=_env(), check=True, timeout=300)
    text = (tmp_path / "load.err").read_bytes()
    assert b"LOAD REPORT" in text and b"model.norm.weight" in text
    assert b"\x1b" not in text and b"\r" not in text


def _train(tmp_path, tiny_dirs, *args) -> tuple[bytes, bytes, Path]:
    """`headsurgeon ... train` on a tiny Llama, 20 steps, stdout and stderr into files."""
    from train_helpers import recipe_text, write_questions

    data = write_questions(tmp_path / "train.jsonl", 12)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(tiny_dirs["llama"], data, out_dir=tmp_path / "run", steps=20))
    argv = [a if a != "RECIPE" else str(recipe) for a in args]
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        proc = subprocess.run([sys.executable, "-m", "headsurgeon", *argv], stdout=out,
                              stderr=err, env=_env(), cwd=tmp_path, timeout=600)
    stdout, stderr = (tmp_path / "out").read_bytes(), (tmp_path / "err").read_bytes()
    assert proc.returncode == 0, stderr[-2000:]
    return stdout, stderr, tmp_path / "run" / "delta.safetensors"


def test_train_into_a_log_file_prints_plain_lines_every_tenth_step(tmp_path, tiny_dirs):
    stdout, stderr, delta = _train(tmp_path, tiny_dirs, "train", "RECIPE", "--verbose")
    for stream in (stdout, stderr):
        assert b"\r" not in stream and b"\x1b" not in stream
    assert stdout.decode() == f"wrote {delta}\n"
    text = stderr.decode()
    assert _counts(text, "train sft") == list(range(2, 21, 2)), text  # --verbose: no gap
    assert re.search(r"^train sft: 20/20 \(100%\) \d+\.\ds loss=\d\.\d{3}$", text, re.M), text
    assert "Loading weights" not in text  # transformers' per-tensor bar stays off in a log


def test_quiet_train_prints_only_what_it_wrote(tmp_path, tiny_dirs):
    stdout, stderr, delta = _train(tmp_path, tiny_dirs, "train", "RECIPE", "-q")
    assert stdout.decode() == f"wrote {delta}\n"
    assert stderr == b""


def test_quiet_run_hides_stage_lines_and_keeps_the_summary(tmp_path, monkeypatch, capsys):
    from headsurgeon.core.recipe import load_recipe
    from headsurgeon.pipeline import Pipeline

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(ROOT / "recipes" / "tiny-smoke.yaml")
    out = tmp_path / "stage.txt"
    Pipeline(recipe).stage("locate", "k1", out, lambda: out.write_text("x"))
    assert capsys.readouterr().out == f"[locate] running -> {out}\n"
    progress.configure(quiet=True)
    pipeline = Pipeline(recipe)
    pipeline.stage("locate", "k2", out, lambda: None)
    pipeline.say("verdict:")
    assert capsys.readouterr() == ("verdict:\n", "")
