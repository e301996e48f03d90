"""Modbus source on pymodbus: TCP, RTU (serial) and RTU over TCP.

config      the [[sources]] kind = "modbus" models (no pymodbus: agent.config loads it for every asset)
planner     merged read requests per device
codec       register words ↔ values (types, word orders, scale and offset)
io          the pymodbus client and link, one request with retries, reads by table
connector   ModbusConnector: one poll task per device, failures, validity
probe       probe formatting (a point's raw words read every plausible way)
write_back  write_modbus (the write_back alarm hook)

This __init__ imports nothing: importing connectors.modbus.config must not load pymodbus.
"""
