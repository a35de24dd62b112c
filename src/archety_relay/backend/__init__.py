"""The Archety backend's protocol: the HTTP client and what its answers mean.

    client     the only user of `requests`: the backend's endpoints, outcomes as values
    answers    JSON answers parsed so that one poison value cannot spoil the rest
    replies    the orchestrator's answer as a plan of timed bubbles
    commands   an `/edge/sync` answer as typed actions
    rules      the backend's message rules (`set_rule`): match and verdict

Everything but `client` is pure. May import: chatdb (the pure `guids`), config, policy and the
top-level values.
"""
