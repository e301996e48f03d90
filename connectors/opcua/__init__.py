"""OPC-UA source on asyncua.

config      the [[sources]] kind = "opcua" models (no asyncua at import: agent.config loads it for every asset)
session     client creation with security and identity, connect/close, node resolution, batched reads
connector   OpcUaConnector: sessions, recovery, probe, trust (the semantics of the whole source)
feed        the subscription (raw publish → batches) and polled reads
values      DataValue → Reading: quality, freshness and validity (rule 2a), timestamps, probe lines
write_back  write_opcua (the write_back alarm hook), value coercion to the node's type
certs       make_client_certificate (`l4e-agent opcua-cert`)
trust       the server certificate's trust (pinning, trusted files and folder, accepted fingerprints)

This __init__ imports nothing: importing connectors.opcua.config must not load asyncua.
"""
