"""OPC-UA source configuration: the [[sources]] kind = "opcua" models.

Light on purpose: no asyncua import at module level, so that agent.config (through connectors.registry) can
validate every asset file without loading the protocol library. The NodeId validator imports asyncua inside the
function, so only an asset with OPC-UA sources pays for it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.base import SourceConfig

# --------------------------------------------------------------------------------------------- config


def _reject_inline_password(data: Any) -> Any:
    """Before-validator: a `password` key gets its own message (extra="forbid" alone would not say why)."""
    if isinstance(data, dict) and "password" in data:
        raise ValueError(
            "an inline `password` is not accepted (asset files get copied and logged): "
            "use password_file or password_env"
        )
    return data


class DeadbandConfig(BaseModel):
    """A data-change filter applied by the server: changes smaller than this are not reported."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["absolute", "percent"] = Field(
        description="absolute: in the value's engineering unit; percent: of the node's EURange "
        "(the server must expose EURange)."
    )
    value: float = Field(ge=0, description="Deadband size (unit per `type`).")


_FIELDS_GIVEN: dict[frozenset, set] = {}  # NodeConfig: one shared set per combination of fields given


class NodeConfig(BaseModel):
    """One sensor: exactly one of node_id and browse_path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensor: str = Field(description="Sensor name (the CSV column) this node feeds.", min_length=1)
    node_id: str | None = Field(default=None, description='OPC-UA NodeId text, e.g. "ns=2;s=Pump07.Flow".')
    browse_path: str | None = Field(
        default=None,
        description='Path of browse names from the Root folder, "/"-separated, each "<ns>:<name>", '
        'e.g. "0:Objects/2:Pump07/2:Flow". Resolved again on every (re)connect.',
    )

    @field_validator("node_id")
    @classmethod
    def _parse_node_id(cls, text: str | None) -> str | None:
        if text is not None:
            from asyncua import ua  # only an asset that has OPC-UA sources pays for asyncua

            try:
                ua.NodeId.from_string(text)
            except (ua.UaError, ValueError, TypeError) as exc:  # UaStringParsingError; ValueError from uuid, int
                raise ValueError(f"not a valid NodeId: {text!r} ({exc})") from None
        return text

    @field_validator("browse_path")
    @classmethod
    def _parse_browse_path(cls, text: str | None) -> str | None:
        if text is not None:
            browse_elements(text)
        return text

    @model_validator(mode="after")
    def _exactly_one_address(self) -> NodeConfig:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError(f"sensor {self.sensor!r}: give exactly one of node_id and browse_path")
        # a file can list 20,000 nodes: they share one set of the field names given instead of a set of 216 bytes
        # each (the model is frozen: nothing adds to it; model_copy copies it before an update)
        given = self.__pydantic_fields_set__
        object.__setattr__(self, "__pydantic_fields_set__", _FIELDS_GIVEN.setdefault(frozenset(given), given))
        return self


class SecurityConfig(BaseModel):
    """Secure channel settings, used identically on every (re)connect and by write_opcua."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] = Field(
        default="None", description="Security policy of the secure channel."
    )
    mode: Literal["Sign", "SignAndEncrypt"] = Field(
        default="SignAndEncrypt", description="Message security mode (ignored when policy is None)."
    )
    certificate: Path | None = Field(
        default=None,
        description="Client certificate (DER or PEM); relative to the asset file's folder. "
        "`l4e-agent opcua-cert` makes one.",
    )
    private_key: Path | None = Field(
        default=None, description="Client private key (PEM or DER); relative to the asset file's folder."
    )
    server_certificate: Path | list[Path] | None = Field(
        default=None,
        description="Trusted server certificate(s): a file or a list (DER or PEM), relative to the asset "
        "file's folder. Given (or with trust_dir), only these and one accepted with `l4e-agent probe CONFIG "
        "--source NAME --accept-certificate FINGERPRINT` are trusted. Absent: the first certificate seen is "
        "pinned in <state-dir>/trust/<source>.der (see trust_on_first_use). A server presenting any other "
        "certificate is refused before the username and password are sent.",
    )
    trust_dir: Path | None = Field(
        default=None,
        description="Folder of trusted server certificates (*.der, *.cer, *.crt, *.pem), relative to the "
        "asset file's folder; read at every connect, so adding a file accepts a certificate without restart.",
    )
    trust_on_first_use: bool = Field(
        default=True,
        description="With no trusted certificate yet (none configured, none accepted): pin the first one "
        "the server presents. false: refuse every server until a certificate is configured or accepted.",
    )
    allow_credentials_over_none: bool = Field(
        default=False,
        description="Policy None proves nothing about the server, so a username and password would go to "
        "anything answering on the endpoint: a username needs a secured policy unless this is true.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: Any) -> Any:
        return _reject_inline_password(data)

    @model_validator(mode="after")
    def _keys_for_policy(self) -> SecurityConfig:
        if self.policy != "None" and (self.certificate is None or self.private_key is None):
            raise ValueError(f"policy {self.policy} needs certificate and private_key")
        if self.policy == "None" and (self.server_certificate is not None or self.trust_dir is not None):
            raise ValueError(
                "server_certificate/trust_dir need a secured policy (Basic256Sha256, Aes128_Sha256_RsaOaep, "
                "Aes256_Sha256_RsaPss): policy None checks no server certificate"
            )
        return self

    def trusted_paths(self) -> list[Path]:
        """``server_certificate`` as a list (empty when absent)."""
        sc = self.server_certificate
        return [] if sc is None else list(sc) if isinstance(sc, list) else [sc]


_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")
_MAX_BACKFILL_AGE_SECS = 366 * 86_400


def duration_secs(text: str) -> int:
    """An ISO 8601 duration of days, hours, minutes and seconds ("PT24H", "P2D", "PT90M") in seconds.
    ValueError (naming the allowed form) for anything else, including months and years (not a fixed length)."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None or text == "P":
        raise ValueError(
            f"got {text!r}; allowed: an ISO 8601 duration of days, hours, minutes, seconds "
            f"such as 'PT24H', 'P2D', 'PT30M' (PT1S … P366D)"
        )
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class BackfillConfig(BaseModel):
    """History backfill (opt-in): on every start and reconnect, the gap per node is read from the server's own
    history (HistoryRead raw) and written into the spool; see connectors.opcua.backfill."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_age: str = Field(
        description="How far back a gap is filled (ISO 8601 duration, PT1S … P366D, e.g. \"PT24H\"); the part of "
        "a gap older than this is cut and reported as out of reach."
    )
    nodes_per_request: int = Field(
        default=20, ge=1, le=10_000,
        description="Nodes per HistoryRead request (a response holds up to nodes_per_request × values_per_request "
        "values in memory at once: 20 × 1000 is about 20 MB of decoded values).")
    values_per_request: int = Field(default=1000, ge=1, le=100_000,
                                    description="NumValuesPerNode of each HistoryRead (values per node per page).")
    values_per_second: float = Field(
        default=100_000, gt=0, le=10_000_000,
        description="Rate limit of the backfill (values per second, all nodes of the source together), so "
        "the history read never competes with the live subscription.",
    )

    @field_validator("max_age")
    @classmethod
    def _parse_max_age(cls, text: str) -> str:
        secs = duration_secs(text)
        if not 1 <= secs <= _MAX_BACKFILL_AGE_SECS:
            raise ValueError(f"got {text!r}; allowed: a duration from PT1S to P366D")
        return text

    @property
    def max_age_secs(self) -> int:
        return duration_secs(self.max_age)


class OpcUaSourceConfig(SourceConfig):
    """An OPC-UA server ([[sources]] with kind = "opcua")."""

    kind: Literal["opcua"] = Field(description="Source type.")
    endpoint: str = Field(
        description="Server endpoint URL, opc.tcp://host:port[/path] (IPv6 literals in brackets).",
        pattern=r"^opc\.tcp://(\[[0-9A-Fa-f:.]+\]|[^/:\s\[\]]+):\d{1,5}(/\S*)?$",
    )
    mode: Literal["subscribe", "poll"] = Field(
        default="subscribe", description="subscribe: the server reports changes; poll: batched reads."
    )
    publishing_interval_ms: float = Field(
        default=1000, gt=0, description="Subscription publishing interval (ms, wall clock)."
    )
    sampling_interval_ms: float = Field(
        default=1000, ge=0, description="Server-side sampling interval per node (ms; 0 = fastest)."
    )
    queue_size: int = Field(
        default=1, ge=0, description="Server-side queue per node: values kept between publishes (1 = latest)."
    )
    deadband: DeadbandConfig | None = Field(
        default=None, description="Optional data-change deadband, applied to every non-Boolean node."
    )
    poll_interval_ms: float = Field(
        default=1000, gt=0, description="Poll mode: time between read cycles (ms, wall clock)."
    )
    nodes: list[NodeConfig] = Field(min_length=1, description="The sensors read from this server.")
    timestamp: Literal["source", "server", "received"] = Field(
        default="source", description="Which time stamps a reading (see the module docs)."
    )
    max_clock_skew_secs: float = Field(
        default=300,
        gt=0,
        description="A source/server timestamp further than this from the received "
        "time is replaced by the received time (and counted).",
    )
    security: SecurityConfig = Field(default_factory=SecurityConfig, description="Secure channel.")
    username: str | None = Field(default=None, description="User name for a UserName identity token.")
    password_file: Path | None = Field(
        default=None, description="File holding the password (first line; relative to the asset file; must be "
        "readable when the asset file is loaded). \"credential:NAME\" reads the systemd credential NAME "
        "($CREDENTIALS_DIRECTORY/NAME, filled by LoadCredential= or SetCredentialEncrypted= in the unit) instead."
    )
    password_env: str | None = Field(default=None, description="Environment variable holding the password.")
    timeout_secs: float = Field(default=5, gt=0, description="Per-request timeout (s).")
    backoff_initial_secs: float = Field(default=1, gt=0, description="First reconnect delay (s).")
    backoff_max_secs: float = Field(default=30, gt=0, description="Reconnect delay cap (s).")
    backfill: BackfillConfig | None = Field(
        default=None,
        description="Fill the gaps (agent restart, lost link) from the server's history, e.g. backfill = "
        '{ max_age = "PT24H" }; all keys with their defaults: { max_age = "PT24H", nodes_per_request = 20, '
        "values_per_request = 1000, values_per_second = 100000 } (max_age: how far back a gap is filled, ISO 8601 "
        "days/hours/minutes/seconds, PT1S … P366D; nodes_per_request: nodes per HistoryRead; values_per_request: "
        "values per node per page; values_per_second: rate limit of the whole source). Needs timestamp = "
        "\"source\" or \"server\". See the README's \"History backfill\".",
    )
    stale_after_intervals: int = Field(
        default=10,
        ge=0,
        description="Publishing intervals without any notification or keep-alive "
        "after which the session is treated as lost (0 disables; never less than timeout_secs).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: Any) -> Any:
        return _reject_inline_password(data)

    @model_validator(mode="after")
    def _check_consistency(self) -> OpcUaSourceConfig:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give at most one of password_file and password_env")
        if (self.password_file is not None or self.password_env is not None) and not self.username:
            raise ValueError("a password needs a username")
        if self.username and self.security.policy == "None" and not self.security.allow_credentials_over_none:
            raise ValueError(
                "username with security.policy = \"None\": the password would be sent to whatever answers on "
                "the endpoint; set security.policy (Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss) "
                "or security.allow_credentials_over_none = true"
            )
        if self.backfill is not None and self.timestamp == "received":
            raise ValueError(
                'backfill needs timestamp = "source" or "server": history values have no received time'
            )
        if self.backoff_max_secs < self.backoff_initial_secs:
            raise ValueError("backoff_max_secs must be >= backoff_initial_secs")
        sensors = [n.sensor for n in self.nodes]
        duplicates = sorted({s for s in sensors if sensors.count(s) > 1})
        if duplicates:
            raise ValueError(f"sensor names used twice: {', '.join(duplicates)}")
        return self

    def sensors(self, base_dir: Path) -> list[str]:
        return [n.sensor for n in self.nodes]


def browse_elements(text: str) -> list[tuple[int, str]]:
    """'0:Objects/2:Pump07/2:Flow' → (namespace index, browse name) pairs; a ValueError names the bad element."""
    names = []
    for part in text.strip("/").split("/"):
        ns, sep, name = part.partition(":")
        if not sep or not ns.isdigit() or not name:
            raise ValueError(f"browse_path element {part!r} is not '<namespace index>:<browse name>'")
        names.append((int(ns), name))
    return names
