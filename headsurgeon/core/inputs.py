"""Reading files a user names and expanding paths a recipe writes, safely.

Recipes and data files often come from someone else. Two things follow:

- a file to read must be a regular file of bounded size: ``/dev/zero``, a FIFO or a
  symlink to either would otherwise hang or fill memory (:func:`read_input`);
- ``$VARS`` in a recipe's paths must not reach secrets: ``model: {source: $HF_TOKEN}``
  would print the token in the "no such directory" error. Secret-looking variables are
  refused (:func:`expand_path`), and :func:`redact` scrubs the values of every secret in
  the environment from a message before it is printed.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from headsurgeon.core.errors import ValidationError

# names of environment variables whose values are credentials: HF_TOKEN, GITHUB_TOKEN,
# NDIF_API_KEY, AWS_SECRET_ACCESS_KEY, DB_PASSWORD... (whole words: not TOKENIZERS_...)
SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|"
                         r"PRIVATE_?KEY|CREDENTIALS?|AUTH)(_|$)", re.I)
KNOWN_SECRETS = ("NDIF_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
MIN_SECRET_CHARS = 8  # shorter values ("1", "true") are settings, and would mangle text
_VAR = re.compile(r"\$(\w+)|\$\{([^}]*)\}")


def is_secret_name(name: str) -> bool:
    return name in KNOWN_SECRETS or bool(SECRET_NAME.search(name))


def secret_values() -> list[str]:
    """Values of the secret variables currently set, longest first."""
    vals = {v for k, v in os.environ.items()
            if is_secret_name(k) and len(v) >= MIN_SECRET_CHARS}
    return sorted(vals, key=len, reverse=True)


def redact(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, "***")
    return text


def expand_path(text: str, *, field: str | None = None, file: str | None = None) -> str:
    """``~`` and ``$VARS`` expanded, refusing variables that hold secrets."""
    for m in _VAR.finditer(text):
        name = m.group(1) or m.group(2)
        if is_secret_name(name):
            raise ValidationError(f"refusing to expand ${name}: it holds a secret and would "
                                  "end up in paths, logs and error messages", file=file,
                                  field=field)
    return os.path.expanduser(os.path.expandvars(text))


def read_input(path: str | os.PathLike, *, limit: int, what: str = "file",
               field: str | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ValidationError otherwise."""
    path = Path(path)
    name = str(path)

    def bad(msg: str) -> ValidationError:
        return ValidationError(msg, file=name, field=field)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    except FileNotFoundError:
        raise bad("no such file") from None
    except IsADirectoryError:
        raise bad(f"is a directory, not a {what}") from None
    except OSError as exc:
        raise bad(f"cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise bad(f"is a directory, not a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise bad(f"not a regular file (a device, FIFO or socket), not a {what}")
        if st.st_size > limit:
            raise bad(f"larger than {limit} bytes; not a {what}")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise bad(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # grew while we read it
        raise bad(f"larger than {limit} bytes; not a {what}")
    return data


def open_input(path: str | os.PathLike, *, what: str = "file", field: str | None = None):
    """A binary file object for a regular file (streamed readers bound their own lines)."""
    path = Path(path)
    name = str(path)
    try:
        fh = open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")
    except FileNotFoundError:
        raise ValidationError("no such file", file=name, field=field) from None
    except IsADirectoryError:
        raise ValidationError(f"is a directory, not a {what}", file=name, field=field) from None
    except OSError as exc:
        raise ValidationError(f"cannot read: {exc.strerror or exc}", file=name,
                              field=field) from None
    mode = os.fstat(fh.fileno()).st_mode
    if not stat.S_ISREG(mode):
        fh.close()
        if stat.S_ISDIR(mode):
            raise ValidationError(f"is a directory, not a {what}", file=name, field=field)
        raise ValidationError(f"not a regular file (a device, FIFO or socket), not a {what}",
                              file=name, field=field)
    return fh
