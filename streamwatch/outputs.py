"""Output paths checked before the work that fills them: a bad path is an error at once,
not after a run (and an output opened first is never left empty by a later one failing)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from streamwatch.errors import ConfigError


def check_writable(flag: str, path: str, *, directory: bool = False,
                   make_parents: bool = True) -> None:  # fmt: skip
    """Raise ``ConfigError`` (naming ``flag``) if ``path`` cannot be written.

    ``directory``: ``path`` is a directory to write files in, not a file. With
    ``make_parents`` the writer creates missing directories, so the nearest existing one
    must take a new file (probed with a temporary file, which also catches read-only
    mounts); without, the parent must exist.
    """
    target = Path(path)
    if target.exists() and target.is_dir() != directory:
        raise ConfigError(f"{flag} {path} is {'not ' if directory else ''}a directory; "
                          "choose another path")
    if target.exists() and not directory:
        if not os.access(target, os.W_OK):
            raise ConfigError(f"{flag} {path}: permission denied; choose another path")
        return
    existing = target if target.exists() else target.parent
    if not make_parents and not existing.is_dir():
        raise ConfigError(f"{flag} {path}: directory {existing} does not exist; create it or "
                          "choose another path")
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is not a directory; choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        where = ("write in" if existing in (target, target.parent)
                 else f"create {target if directory else target.parent} in")
        raise ConfigError(f"{flag} {path}: cannot {where} {existing} ({exc.strerror}); "
                          "choose another path") from None
