"""The ``[metrics]`` settings model lives in agent.core.metrics_config (the config package imports no runtime
module); re-exported here for the runtime's own modules."""

from agent.core.metrics_config import MetricsConfig, is_loopback, read_token

__all__ = ["MetricsConfig", "is_loopback", "read_token"]
