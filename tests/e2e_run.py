"""Running a whole `headsurgeon run` through the CLI for the reduced real-model tests."""
import os
import subprocess
import sys
from pathlib import Path


def run_recipe(tmp_path_factory, name: str, recipe_text: str, *, timeout: int) -> Path:
    """Write ``recipe_text`` (``{out}`` = its run directory) and run it; the run dir."""
    d = tmp_path_factory.mktemp(name)
    recipe = d / "e2e.yaml"
    recipe.write_text(recipe_text.replace("{out}", str(d / "run")))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "headsurgeon", "run", str(recipe)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d / "run"
