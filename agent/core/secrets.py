"""Secret files, or systemd credentials in their place: ``password_file = "credential:opcua-password"``.

A secret file key (an OPC-UA ``password_file``, a webhook's ``secret_file``) holds a path, relative to the asset
file's folder, or ``credential:NAME``: the file NAME in ``$CREDENTIALS_DIRECTORY``, which systemd fills for the
unit from ``LoadCredential=NAME:/path`` or ``SetCredentialEncrypted=NAME:…`` (readable by that unit only, kept
in memory, never on the asset file's disk). Only the path is resolved here; the secret is read where it is used,
at each use, so a rotated secret is picked up without a restart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

CREDENTIAL_PREFIX = "credential:"
_NAME = re.compile(r"^[A-Za-z0-9_.@:\-]{1,255}$")  # systemd's credential names: no "/", not "." or ".."


class CredentialError(ValueError):
    """A ``credential:NAME`` that cannot be located; the message says why and what to set."""


def credential_name(written: Path | str) -> str | None:
    """NAME for ``credential:NAME``; None for a file path."""
    text = str(written)
    return text[len(CREDENTIAL_PREFIX):] if text.startswith(CREDENTIAL_PREFIX) else None


def secret_path(written: Path | str, base_dir: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where the secret named by ``written`` lives: ``$CREDENTIALS_DIRECTORY/NAME`` for ``credential:NAME``,
    else the path, relative to ``base_dir``. Raises CredentialError for a bad name or an unset directory
    (whether the file exists is for the caller to find out when it reads it)."""
    name = credential_name(written)
    if name is None:
        path = Path(written)
        return path if path.is_absolute() else base_dir / path
    if not _NAME.match(name) or name in (".", ".."):
        raise CredentialError(f"credential {name!r}: not a systemd credential name (letters, digits, . _ - @ :, "
                              "no '/')")
    folder = (os.environ if environ is None else environ).get("CREDENTIALS_DIRECTORY")
    if not folder:
        raise CredentialError(f"credential {name!r}: $CREDENTIALS_DIRECTORY is not set; systemd sets it for a "
                              f"unit with LoadCredential={name}:/path/to/secret (or SetCredentialEncrypted=); "
                              "outside systemd, name a file instead")
    return Path(folder) / name
