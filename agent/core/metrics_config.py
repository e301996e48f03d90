"""The ``[metrics]`` table and its access rule: loopback is open, any other address needs a token.

Kept apart from the exposition (agent.runtime.metrics) and the server (agent.runtime.httpd), in agent.core, so
that loading a configuration imports nothing of agent.runtime (neither prometheus_client nor asyncio's server
machinery).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MetricsConfig(BaseModel):
    """The ``[metrics]`` table of an asset file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="Serve Prometheus /metrics, /healthz and the status page (/ and "
                          "/api/status) over HTTP.")
    host: str = Field(
        "127.0.0.1",
        description="Address to listen on (also serves the status page / and /api/status). Any address but "
        "loopback requires token_file.",
    )
    port: int = Field(9108, ge=0, le=65535, description="TCP port to listen on; 0 picks a free port (tests).")
    token_file: Path | None = Field(
        None,
        description="File holding the bearer token (surrounding whitespace stripped) every request must carry "
        "when set; required when host is not loopback. Relative to the asset file's folder.",
    )

    @model_validator(mode="after")
    def _token_when_exposed(self) -> MetricsConfig:
        if self.enabled and not is_loopback(self.host) and self.token_file is None:
            raise ValueError(f"host {self.host!r} is not loopback: token_file is required (a file holding the "
                             "bearer token), or use host = \"127.0.0.1\"")
        return self


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1; a host name other than localhost counts as exposed."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    """The token in ``path`` (whitespace stripped). Raises ValueError when it is unreadable or empty."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read token file {path}: {exc}") from None
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token
