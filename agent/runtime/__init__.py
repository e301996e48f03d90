"""The running agent: building, scheduling and supervising the data path, and what it shows to operators.

agent           the Agent: runs the asset runners, HTTP listener, health, sd_notify, SIGHUP reload, SIGTERM drain
asset           AssetRunner: builds one asset's connectors, pipeline, alarms and results poller, and supervises them
scheduler       the only APScheduler user
supervision     what the service shows while it runs: metrics collection, /healthz, systemd notifications
sdnotify        systemd notify and watchdog
metrics         the agent's Prometheus metrics (prometheus_client custom collector, filled at scrape time)
metrics_config  the [metrics] table and its token rule
httpd           the HTTP listener: /metrics, /healthz, the status page and /api/status
logs            logging configuration (logfmt or JSON)
status_data     the status page's data
status_history  the bounded history behind the status page's charts
status_page     the status page's HTML
"""
