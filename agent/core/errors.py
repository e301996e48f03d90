"""One exception tree for the agent.

    L4EAgentError
    ├── ConfigError          invalid asset file or option; the CLI exits 78 (EX_CONFIG)
    ├── StateError           the state directory is unusable (read-only, full, corrupt): exit 75 (78: wrong path)
    ├── StoreError           an object store operation failed
    │   └── StoreUnavailable     retriable: network, throttling, 5xx (the uploader backs off)
    ├── ConnectorError       a source failed in a way its own retry loop cannot fix
    │   └── ConnectionLost       retriable: the peer went away (connectors reconnect inside)
    └── LookoutError         the Lookout for Equipment API answered with an error

Retriable errors are handled where they happen (connectors, uploader); only the supervisor in
agent.runtime.asset catches Exception, logs it and restarts that task.
"""

from __future__ import annotations

import errno


class L4EAgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(L4EAgentError):
    """A configuration problem. ``str()`` names the file, the key path and the allowed values."""

    exit_code = 78  # EX_CONFIG: systemd's RestartPreventExitStatus=78 stops the restart loop

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        self.detail = message  # without the file and key prefix (to re-raise with another file)
        prefix = ""
        if file:
            prefix += f"{file}: "
        if key:
            prefix += f"{key}: "
        super().__init__(prefix + message)


class StateError(L4EAgentError):
    """The state directory cannot be used (full, read-only, I/O error, unreadable, not a folder).

    Raised ``from`` the OSError behind it. Maybe temporary, so the CLI exits 75 (EX_TEMPFAIL) and the unit
    restarts the agent with a delay, forever; except when the path itself is wrong (``wrong_path``: a file
    where the folder should be), which no restart fixes: that is a configuration error (78).
    """

    exit_code = 75  # EX_TEMPFAIL

    @property
    def wrong_path(self) -> bool:
        cause = self.__cause__
        return isinstance(cause, OSError) and cause.errno in (errno.ENOTDIR, errno.EEXIST)


class StoreError(L4EAgentError):
    """An object store operation failed for good (e.g. access denied, no such bucket)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; retry later."""


class ConnectorError(L4EAgentError):
    """A source failed in a way its reconnect loop cannot fix (e.g. a node that does not exist)."""


class ConnectionLost(ConnectorError):
    """The peer went away; the connector reconnects with backoff."""


class LookoutError(L4EAgentError):
    """The Lookout for Equipment API answered with an error."""


class TransitionLog:
    """Log a failing condition once when it starts (WARNING), repeats at DEBUG, and recovery once (INFO).

    One instance per condition family; ``key`` tells conditions apart (a device, a node, a peer).
    """

    def __init__(self, logger) -> None:
        self._logger = logger
        self._failing: dict[str, int] = {}

    def failure(self, key: str, message: str, *args, exc_info: BaseException | None = None) -> bool:
        """Record a failure; returns True when this is the transition into failure (it was logged).
        ``exc_info``: an exception whose traceback goes with the line (a bug, not an expected failure)."""
        count = self._failing.get(key, 0)
        self._failing[key] = count + 1
        if count == 0:
            self._logger.warning(message, *args, exc_info=exc_info)
            return True
        self._logger.debug(message, *args, exc_info=exc_info)
        return False

    def success(self, key: str, message: str, *args) -> bool:
        """Record success; returns True (and logs at INFO) when it ends a failure."""
        count = self._failing.pop(key, 0)
        if count:
            self._logger.info(message + " (after %d failures)", *args, count)
            return True
        return False

    def is_failing(self, key: str) -> bool:
        return key in self._failing
