"""The shared vocabulary every other package builds on; it imports nothing else from agent (connectors import
only this package).

model   Reading, Quality, validity-end markers
errors  the error tree (ConfigError → exit 78, ConnectorError, ConnectionLost) and TransitionLog
clock   Clock (system, scaled, persisted), instants, Backoff
offloop DiskWorker: blocking file work off the event loop, in order
arrow   Arrow arrays to and from numpy through their buffers (never through pyarrow's pandas shim)
"""
