"""The demo: a simulated plant and a run of the whole path against it (not used by a production agent).

pump_model  the pump's physics and faults (the sensors' values over time)
simulator   the plant served over OPC-UA and Modbus
simulate    `l4e-agent simulate`: the simulator from the command line
run         `l4e-agent demo`: the plant, the agent and the local L4E service on one clock
chart       a self-contained HTML chart of a run (sensors, anomaly score, fault, alarm spans)
"""
