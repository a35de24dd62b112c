"""Whether iMessage is working, told to the operator's tools: counters, alerts, checks, and the
`/metrics` + `/healthz` server.

    tally      running counts and latency buckets the steps add to (plain values, thread-safe)
    checks     a snapshot of the relay's state → `/healthz`'s answer (pure)
    silence    no incoming message for ARCHETY_SILENCE_ALERT → an alert (one step, takes `now`)
    keepalive  Messages.app not running, hung or signed out → relaunch / restart / alert
    server     the only user of prometheus_client: the metrics families and the loopback server

May import: outbound, capture, store, macos, chatdb, config and the top-level values. Its server's
handlers read state and never change it.
"""
