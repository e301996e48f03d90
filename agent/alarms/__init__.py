"""Alarms: rules over results and data-health events, persisted alarm state, and the hooks that deliver them.

engine  hook and rule configuration, rules, persisted state, AlarmEngine
hooks   the hooks (exec, webhook, file, log, write_back) with their retries
"""
