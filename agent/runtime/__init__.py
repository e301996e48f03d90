"""The running agent: building, scheduling and supervising the data path, and what it shows to operators.

service         builds an asset's runner (connectors, pipeline, alarms, results) and supervises it
scheduler       the only APScheduler user
supervision     what the service shows while it runs: metrics collection, /healthz, systemd notifications
sdnotify        systemd notify and watchdog
metrics         Prometheus metrics: the registry, the agent's metric set, a small HTTP server
logs            logging configuration (logfmt or JSON)
status_data     the status page's data
status_history  the bounded history behind the status page's charts
status_page     the status page's HTML
"""
