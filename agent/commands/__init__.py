"""The l4e-agent commands that build or check assets (agent.cli parses the command line and dispatches here).

common  the state folder root, the clock from --clock-start/--speed, loading asset files (with discovery)
run     ``run``: the runners and the Agent
check   ``check`` (the resolved plan, offline) and ``probe`` (read every configured point once)
"""
