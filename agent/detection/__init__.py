"""Anomaly detection: the detector and its evaluation, a room of their own.

Arrays in, scores and diagnostics out: nothing here imports the local L4E service, the agent or any I/O
beyond the detector's own file. The local service (CreateModel, inference) and ``l4e-agent lookout
evaluate`` call the same functions, so what ``evaluate`` measures is what an operator gets.

    features    causal row operations (trailing mean/median, lagged reference) on regular grids
    detector    the detector: fit on normal rows, score rows with their recent context, save/load
    metrics     point-wise F1 / FAR / MAR and event figures (detected events, delay, false alarms per day)
    runs        labelled runs from CSV files (SKAB's layout and others) for evaluation
    evaluate    fit on each run's first rows, score the rest, pool the figures

A next detector is one module beside ``detector`` with the same ``fit``/``score`` contract, judged by
``evaluate`` the same way.
"""

from agent.detection.detector import Detector, DetectorParams, ModelFormatError, rounded_shares

__all__ = ["Detector", "DetectorParams", "ModelFormatError", "rounded_shares"]
