"""CSV cells carry at most 12 significant digits (a mean's float noise is not written)."""

import numpy as np

from agent.pipeline.csvfile import cell, component_csv, time_column
from agent.pipeline.resample import Grid


def test_cells_have_at_most_12_significant_digits():
    values = [(44.1 + 43.95) / 2, 0.1 + 0.2, 60.0, 1234567.891234567, -0.000123456789012345, 1e20, 7.0 / 3.0]
    grid = Grid(times=np.array([60, 120, 180, 240, 300, 360, 420]), sensors=["a"], values=np.array([values]).T)
    rows = component_csv(grid, ["a"]).decode().splitlines()[1:]
    cells = [row.split(",")[1] for row in rows]
    assert cells == ["44.025", "0.3", "60.0", "1234567.89123", "-0.000123456789012", "1e+20", "2.33333333333"]
    for text, value in zip(cells, values, strict=True):
        digits = text.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
        assert len(digits) <= 12
        assert abs(float(text) - value) <= abs(value) * 1e-11
    assert cell(float("inf")) == "inf"


def _reference_csv(grid: Grid, sensors: list[str]) -> bytes:
    """The file as the definition says it, one ``cell`` call per value (how it was written before rows were
    formatted in one operation)."""
    block = grid.values[:, [grid.sensors.index(s) for s in sensors]]
    lines = [",".join(["Timestamp", *sensors])]
    for stamp, row in zip(time_column(grid.times), block.tolist(), strict=True):
        lines.append(stamp + "," + ",".join(["" if v != v else cell(v) for v in row]))
    return ("\n".join(lines) + "\n").encode()


def test_rows_formatted_at_once_are_the_cells_of_the_definition():
    rng = np.random.default_rng(7)
    values = [0.0, -0.0, 60.0, -60.0, 12.0, 1e12, 1e12 - 1, 999999999999.4, 999999999999.5, 1e15, 1.5e15, 1e16,
              1e16 + 2, -1e14, 9999999999999.0, 123456789012.5, 123456789012.4, 99999999999.99999, 1e-4, 1e-5, 1.5e-5,
              5e-324, 2.2250738585072014e-308, 1e-300, 1e300, float("inf"), float("-inf"), float("nan"), 0.1 + 0.2,
              7 / 3, 3.0000000000004, 2.9999999999996, -2.9999999999996, 0.99999999999999, 1 - 1e-12, 1 + 1e-12]
    for exponent in range(-30, 30):  # every notation %.12g and repr choose between
        scale = 10.0 ** exponent
        values += list(rng.normal(size=40) * scale)
        values += list(np.rint(rng.normal(size=10) * 1e4) * scale)  # integers and short decimals
        values += list((np.rint(rng.normal(size=10) * 1e3) + rng.normal(size=10) * 1e-11) * scale)  # near-integers
    values += list(rng.integers(-1000, 1000, 300).astype(float))
    values += list(rng.integers(0, 2**63, 300, dtype=np.uint64).view(np.float64))  # any bit pattern (NaNs too)
    width = 9
    values += [float("nan")] * (-len(values) % width)
    block = np.array(values, dtype=np.float64).reshape(-1, width)
    sensors = [f"s{i}" for i in range(width)]
    grid = Grid(times=np.arange(1, len(block) + 1) * 60, sensors=sensors, values=block)
    assert component_csv(grid, sensors) == _reference_csv(grid, sensors)
    # rows of only integers, only NaN and decimals mixed, columns reordered: the formats cached per row kind
    mixed = np.where(rng.random((50, width)) < 0.3, np.nan, np.rint(rng.normal(size=(50, width)) * 100))
    mixed[::3, 2] += 0.25
    grid = Grid(times=np.arange(1, 51) * 60, sensors=sensors, values=mixed)
    assert component_csv(grid, sensors[::-1]) == _reference_csv(grid, sensors[::-1])
