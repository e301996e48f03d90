"""Modbus source configuration: the [[sources]] kind = "modbus" models (points, devices, the source).

Light on purpose: no pymodbus import, so that agent.config (through connectors.registry) can validate every
asset file without loading the protocol library."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.base import SourceConfig
from connectors.modbus import codec

Table = Literal["coil", "discrete", "holding", "input"]
BIT_TABLES: tuple[str, ...] = ("coil", "discrete")
REGISTER_TABLES: tuple[str, ...] = ("holding", "input")
TABLE_ORDER: tuple[str, ...] = ("coil", "discrete", "holding", "input")
PointType = Literal["bool", "bit", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
Order = Literal["ABCD", "DCBA", "BADC", "CDAB"]

# --------------------------------------------------------------------------------------------- config


class ModbusPoint(BaseModel):
    """One sensor read from one place of a device's register map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensor: str = Field(min_length=1, description="Sensor name (the CSV column) this point provides.")
    table: Table = Field(description="Modbus table: coil, discrete (input), holding (register), input (register).")
    address: int = Field(ge=0, le=65535, description="Zero-based protocol address of the first register or bit.")
    type: PointType = Field(
        description="bool (coil/discrete only); bit (one bit of a register); int16, uint16 (1 register); "
        "int32, uint32, float32 (2 registers); int64, uint64, float64 (4 registers)."
    )
    order: Order = Field(
        "ABCD",
        description="Byte order of multi-byte values: ABCD big-endian words and bytes; CDAB word swap; BADC "
        "byte swap in each word; DCBA fully little-endian. Ignored for bool and bit.",
    )
    bit: int | None = Field(None, ge=0, le=15, description="Bit index (0 = least significant) for type 'bit'.")
    scale: float = Field(1.0, description="The reading is raw * scale + offset (booleans are 0/1).")
    offset: float = Field(0.0, description="Added after scale: raw * scale + offset.")

    @model_validator(mode="after")
    def _check_type_fits_table(self) -> ModbusPoint:
        if self.table in BIT_TABLES and self.type != "bool":
            raise ValueError(f"point {self.sensor!r}: table {self.table} holds bits; type must be 'bool'")
        if self.table in REGISTER_TABLES and self.type == "bool":
            raise ValueError(
                f"point {self.sensor!r}: table {self.table} holds registers; type must be one of "
                f"{', '.join(codec.REGISTER_TABLE_TYPES)} (use 'bit' for one bit of a register)"
            )
        if (self.type == "bit") != (self.bit is not None):
            raise ValueError(f"point {self.sensor!r}: 'bit' (0..15) is required for type 'bit' and only for it")
        if self.address + self.width - 1 > 65535:
            raise ValueError(f"point {self.sensor!r}: {self.type} at {self.address} runs past address 65535")
        return self

    @property
    def width(self) -> int:
        """Registers (register tables) or bits (bit tables) the point spans."""
        return codec.register_count(self.type)


class ModbusDevice(BaseModel):
    """One Modbus device (unit / slave id) and the points read from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: int = Field(1, ge=0, le=255, description="Modbus device (unit) id.")
    timeout_secs: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds to wait for an answer to one request (on a shared line, rtu or "
        "rtu_over_tcp, the longest timeout of its devices applies).",
    )
    retries: int = Field(
        1, ge=0, le=10, description="Repeats of a request after a timeout, and after a 'device busy' answer."
    )
    pause_ms: int = Field(0, ge=0, le=10_000, description="Pause between two requests to this device, in ms.")
    max_registers_per_request: int = Field(
        125, ge=4, le=125, description="Largest register count one read request may ask for."
    )
    max_bits_per_request: int = Field(
        2000, ge=1, le=2000, description="Largest coil/discrete input count one read request may ask for."
    )
    max_gap_registers: int = Field(
        50,
        ge=0,
        le=125,
        description="Largest run of unused registers a request may read to merge two points (for coils and "
        "discrete inputs, 16 bits per register). 0 merges only adjacent points.",
    )
    one_request_per_point: bool = Field(False, description="Read each point with its own request (no merging).")
    points: list[ModbusPoint] = Field(min_length=1, description="The points read from this device.")


class ModbusSourceConfig(SourceConfig):
    """A Modbus source: one TCP endpoint or serial line, with one or more devices behind it."""

    kind: Literal["modbus"] = Field(description="Source type.")
    transport: Literal["tcp", "rtu", "rtu_over_tcp"] = Field(
        description="tcp (Modbus TCP), rtu (serial line), rtu_over_tcp (RTU frames through a TCP converter)."
    )
    host: str | None = Field(None, description="Host name or IP address (tcp, rtu_over_tcp).")
    port: int | str | None = Field(
        None, description="TCP port (tcp, rtu_over_tcp; default 502) or serial device path (rtu, required)."
    )
    baudrate: int = Field(19200, ge=300, le=921_600, description="Serial bits per second (rtu).")
    parity: Literal["N", "E", "O"] = Field("E", description="Serial parity: N, E or O (rtu).")
    stopbits: Literal[1, 2] = Field(1, description="Serial stop bits (rtu).")
    bytesize: Literal[7, 8] = Field(8, description="Serial data bits (rtu).")
    poll_interval_ms: int = Field(1000, ge=10, le=3_600_000, description="Time between polls of each device, in ms.")
    devices: list[ModbusDevice] = Field(min_length=1, description="Devices on this endpoint or line.")

    @model_validator(mode="after")
    def _check_transport_fields(self) -> ModbusSourceConfig:
        serial_fields = {"baudrate", "parity", "stopbits", "bytesize"} & self.model_fields_set
        if self.transport == "rtu":
            if self.host is not None:
                raise ValueError("transport 'rtu' uses a serial port; remove 'host'")
            if not isinstance(self.port, str) or not self.port:
                raise ValueError("transport 'rtu' needs port = the serial device path, e.g. '/dev/ttyUSB0'")
        else:
            if not self.host:
                raise ValueError(f"transport {self.transport!r} needs 'host'")
            if self.port is not None and (isinstance(self.port, str) or not 1 <= self.port <= 65535):
                raise ValueError(f"transport {self.transport!r} needs port = a TCP port number 1..65535")
            if serial_fields:
                raise ValueError(
                    f"transport {self.transport!r} takes no serial settings: remove {sorted(serial_fields)}"
                )
        return self

    @model_validator(mode="after")
    def _check_unique_names(self) -> ModbusSourceConfig:
        ids = [d.device_id for d in self.devices]
        if len(ids) != len(set(ids)):
            raise ValueError(f"device_id values must be unique, got {ids}")
        seen: set[str] = set()
        for sensor in (p.sensor for d in self.devices for p in d.points):
            if sensor in seen:
                raise ValueError(f"sensor {sensor!r} appears more than once")
            seen.add(sensor)
        return self

    @property
    def tcp_port(self) -> int:
        """The TCP port for tcp and rtu_over_tcp (502 when not given)."""
        return self.port if isinstance(self.port, int) else 502

    @property
    def endpoint(self) -> str:
        """Human-readable target, for logs."""
        if self.transport == "rtu":
            return str(self.port)
        return f"{self.host}:{self.tcp_port}"

    def sensors(self, base_dir: Path) -> list[str]:
        """Every configured sensor name, in configuration order."""
        return [p.sensor for d in self.devices for p in d.points]
