"""What operations, the worker and the scheduler share: state, stores, clock, folders, identity."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from agent.lookout_local.state import State
from agent.lookout_local.stores import Stores


@dataclass
class Context:
    """``clock.now()`` (epoch seconds) stamps every time the API reports; folders live under ``state_dir``."""

    state: State
    stores: Stores
    clock: object
    state_dir: Path
    region: str = "us-east-1"
    account: str = "123456789012"
    keep_executions_days: float | None = None  # None: executions are kept for ever (as the API documents none)

    def arn(self, kind: str, name: str) -> str:
        """``arn:aws:lookoutequipment:<region>:<account>:<kind>/<name>/<uuid>`` (kind: dataset, model,
        inference-scheduler), the form AWS returns and botocore's ARN patterns accept."""
        return f"arn:aws:lookoutequipment:{self.region}:{self.account}:{kind}/{name}/{uuid.uuid4()}"

    def dataset_dir(self, name: str) -> Path:
        return self.state_dir / "datasets" / name

    def model_dir(self, name: str) -> Path:
        return self.state_dir / "models" / name
