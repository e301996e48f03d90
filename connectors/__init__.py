"""Sources of Readings. Connectors import only agent.core (model, errors, clock) and each other.

base      the Connector protocol, SourceConfig, SourceStats, probe reports
registry  kind → config model (light) and connector class (imported by kind)
replay    a CSV file replayed on the agent's clock
opcua/    OPC-UA on asyncua
modbus/   Modbus TCP, RTU and RTU over TCP on pymodbus
"""
