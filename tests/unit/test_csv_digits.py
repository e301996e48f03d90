"""CSV cells carry at most 12 significant digits (a mean's float noise is not written)."""

import numpy as np

from agent.pipeline.csvfile import cell, component_csv
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
