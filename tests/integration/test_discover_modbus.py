"""``l4e-agent discover modbus --register-map``: a 310-row vendor map → an asset file whose `probe` against a
real pymodbus server reads every point with the value the map's types, orders, scales and offsets give."""

from __future__ import annotations

import asyncio
import csv
import re
import sys
import tomllib
from pathlib import Path

from connectors.modbus import codec
from tests.connectors.modbus_peer import sim_device, tcp_peer

ROOT = Path(__file__).resolve().parents[2]

REGISTER_TYPES = [("int16", "ABCD"), ("uint16", "ABCD"), ("int32", "CDAB"), ("uint32", "ABCD"),
                  ("float32", "ABCD"), ("float32", "CDAB"), ("float64", "DCBA"), ("int64", "BADC"), ("bit", "ABCD")]


def build_map() -> tuple[list[list[str]], dict[str, float], dict]:
    """Rows of the map (with a header), the value each sensor must read, and the server's tables."""
    rows = [["Tag Name", "Register", "Area", "Data Type", "Byte Order", "Scale", "Offset", "Units", "Equipment",
             "Bit"]]
    expected: dict[str, float] = {}
    tables: dict[str, list] = {"holding": [], "input": [], "coil": [], "discrete": []}
    for i in range(220):  # holding registers, every type and order, some scaled
        type_, order = REGISTER_TYPES[i % len(REGISTER_TYPES)]
        address = len(tables["holding"])
        scale, offset = (0.5, 10.0) if i % 4 == 0 else (1.0, 0.0)
        if type_ == "bit":
            raw = 1
            tables["holding"].append(1 << (i % 16))
            rows.append([f"Pump {i} alarm", str(address), "holding", "bit", "", "", "", "", "pump", str(i % 16)])
            expected[f"Pump_{i}_alarm"] = float(raw)
            continue
        raw = {"int16": -i, "uint16": 60000 - i, "int32": -100000 - i, "uint32": 3_000_000_000 + i,
               "float32": i + 0.25, "float64": i / 8, "int64": -(2**40) - i}[type_]
        tables["holding"].extend(codec.encode(raw, type_, order))
        rows.append([f"Pump {i} {type_}", str(address), "holding", type_.upper(), order, str(scale), str(offset),
                     "bar", "pump", ""])
        expected[f"Pump_{i}_{type_}"] = raw * scale + offset
    for i in range(50):  # input registers
        address = len(tables["input"])
        tables["input"].extend(codec.encode(i * 1.5, "float32", "CDAB"))
        rows.append([f"Tank.{i}.level", str(address), "input", "float32", "CDAB", "", "", "m", "tank", ""])
        expected[f"Tank.{i}.level"] = i * 1.5
    for table, count in (("coil", 25), ("discrete", 15)):
        for i in range(count):
            tables[table].append(i % 3 == 0)
            rows.append([f"{table}-{i}", str(i), table, "bool", "", "", "", "", "valves", ""])
            expected[f"{table}-{i}"] = 1.0 if i % 3 == 0 else 0.0
    return rows, expected, tables


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


COLUMNS = ["--column", "name=Tag Name", "--column", "address=Register", "--column", "table=Area",
           "--column", "type=Data Type", "--column", "order=Byte Order", "--column", "unit=Units",
           "--column", "component=Equipment"]


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_register_map_to_probe(tmp_path):
    rows, expected, tables = build_map()
    assert len(rows) - 1 >= 300
    path = tmp_path / "vendor-map.csv"
    write_csv(path, rows)
    device = sim_device(3, holding={0: tables["holding"]}, input={0: tables["input"]}, coils={0: tables["coil"]},
                        discrete={0: tables["discrete"]})
    async with tcp_peer(device) as peer:
        out = tmp_path / "pump.toml"
        code, _, stderr = await cli("discover", "modbus", "--register-map", str(path), *COLUMNS, "--host",
                                    "127.0.0.1", "--port", str(peer.port), "--device-id", "3", "--asset", "pump",
                                    "--input", f"file://{tmp_path}/store/", "-o", str(out))
        assert code == 0, stderr
        planned = int(re.search(r"reads them in (\d+) request\(s\) per poll", stderr).group(1))
        # 220 holding points over 431 registers (125 a request), 50 input over 100, one coil and one discrete read
        assert planned == 4 + 1 + 1 + 1, stderr
        doc = tomllib.loads(out.read_text())
        assert set(doc["components"]) == {"pump", "tank", "valves"}
        assert "# holding[0] int16 · bar · map name 'Pump 0 int16'" in out.read_text()
        code, stdout, stderr = await cli("probe", str(out))
    assert code == 0, stdout + stderr
    read = {m.group(1): float(m.group(2)) for m in re.finditer(r"^  (\S+)\s+value=([-\d.e+]+) ", stdout, re.M)}
    assert read.keys() == expected.keys()
    wrong = {k: (read[k], v) for k, v in expected.items() if read[k] != v}
    assert not wrong


async def test_malformed_rows_write_nothing(tmp_path):
    out = tmp_path / "pump.toml"
    cases = [
        ("name,address,table,type\nflow,0,holding,float32\nlevel,2,holdng,int16\n",
         "line 3: table: got 'holdng'; allowed: 'coil' | 'discrete' | 'holding' | 'input'"),
        ("name,address,table,type\nflow,0,holding,float32\nflow,2,holding,int16\n",
         "line 3: name 'flow' (sensor 'flow') is already used by line 2"),
        ("name,address,table,type\nflow,0,holding,float32\n\nlevel,65535,holding,int32\n",
         "line 4: point 'level': int32 at 65535 runs past address 65535"),
        ("name,address,table,type\nflow,70000,holding,float32\n", "line 2: address: Input should be less than"),
        ("name,address,table,type\nflow,x12,holding,float32\n",
         "line 2: address: got 'x12'; allowed: an integer (decimal or 0x hex)"),
        ("name,register,table,type\nflow,0,holding,float32\n", "line 1: missing column(s) address"),
    ]
    for text, message in cases:
        path = tmp_path / "map.csv"
        path.write_text(text)
        code, _, stderr = await cli("discover", "modbus", "--register-map", str(path), "-o", str(out))
        assert code == 65, (text, stderr)
        assert message in stderr, (message, stderr)
        assert not out.exists()
    code, _, stderr = await cli("discover", "modbus", "--register-map", str(path), "--column", "adress=Register")
    assert code == 64 and "expected FIELD=HEADER" in stderr
