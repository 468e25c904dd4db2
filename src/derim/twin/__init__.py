"""The digital twin: forecasting, backtesting, anomaly detection and what-if simulation.

torch is imported only by :mod:`derim.twin.lstm`, and only when an LSTM is fitted or loaded.
"""
