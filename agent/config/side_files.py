"""The files an asset file points at besides its own data: checked when the file is loaded, not at first use.

A missing OPC-UA client certificate, private key, trusted server certificate or password file, the Lookout
endpoint's CA bundle, a webhook's secret file, or an exec hook's program given as a path would otherwise
surface only when the agent first connects or fires (an endless retry, or an alarm that is never delivered).
``load`` (and so ``check`` and ``run``) refuses them as configuration errors naming the key, the resolved path
and the reason (exit 78).

Checked: each is a file this process can open and read. Not checked: a ``trust_dir`` (read at every connect, it
may be filled later), a program given as a bare name (looked up in the unit's PATH when it runs), what is inside
the files (a certificate is parsed when it is used).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from agent.config.files import describe_read_error
from agent.core.errors import ConfigError
from agent.core.secrets import CredentialError, credential_name, secret_path


def _opcua(i: int, source) -> Iterator[tuple[str, Path]]:
    sec = source.security
    for name in ("certificate", "private_key"):
        if getattr(sec, name) is not None:
            yield f"sources[{i}].security.{name}", getattr(sec, name)
    trusted = sec.server_certificate
    if isinstance(trusted, list):
        for k, path in enumerate(trusted):
            yield f"sources[{i}].security.server_certificate[{k}]", path
    elif trusted is not None:
        yield f"sources[{i}].security.server_certificate", trusted
    if source.password_file is not None:
        yield f"sources[{i}].password_file", source.password_file


def side_files(config) -> Iterator[tuple[str, Path, bool, str]]:
    """(key, path as written, must be executable, whose: ' (source "plc")' or '') for every side file."""
    for i, source in enumerate(config.sources):
        if source.kind == "opcua":
            for key, path in _opcua(i, source):
                yield key, Path(path), False, f' (source "{source.name}")'
    if config.lookout.ca_bundle is not None:
        yield "lookout.ca_bundle", Path(config.lookout.ca_bundle), False, ""
    for name, hook in config.alarms.hooks.items():
        secret = getattr(hook, "secret_file", None)
        if secret is not None:
            yield f"alarms.hooks.{name}.secret_file", Path(secret), False, ""
        argv = getattr(hook, "argv", None)
        if argv and "/" in argv[0]:
            yield f"alarms.hooks.{name}.argv[0]", Path(argv[0]), True, ""


def check_side_files(config, path: Path, base_dir: Path) -> None:
    """Raise ConfigError for the first side file that cannot be read (or run); relative paths are taken from
    ``base_dir``, the asset file's folder, as the agent resolves them."""
    for key, written, executable, whose in side_files(config):
        name = credential_name(written) if not executable else None
        try:
            where = secret_path(written, base_dir) if name is not None else (
                written if written.is_absolute() else base_dir / written)
        except CredentialError as exc:
            raise ConfigError(f"{exc}{whose}", file=str(path), key=key) from None
        try:
            with open(where, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            if name is not None:
                reason = "it has no such file" if isinstance(exc, FileNotFoundError) else describe_read_error(
                    exc, where)
                raise ConfigError(f"credential {name!r}: not in $CREDENTIALS_DIRECTORY ({where.parent}): {reason}; "
                                  f"the unit needs LoadCredential={name}:/path/to/secret (or "
                                  f"SetCredentialEncrypted=){whose}", file=str(path), key=key) from None
            raise ConfigError(describe_read_error(exc, where) + whose, file=str(path), key=key) from None
        if executable and not os.access(where, os.X_OK):
            raise ConfigError(f"{where}: not executable (chmod +x, or give the interpreter as argv[0])",
                              file=str(path), key=key)
