"""Alarms: rules over results and data-health events, persisted alarm state, and the hooks that deliver them.

config       the [alarms] table: rules and their hook references
hook_config  the hooks' configuration models, the hook protocol and the alarm payload
rules        the rules: pure functions of (config, state, input) → transitions
state        the persisted state (rule states and the outbox)
engine       AlarmEngine: decide, persist, then deliver
hooks        the hooks (exec, webhook, file, log, write_back) with their retries
"""
