"""The operator's tools: what `doctor`, `doctor --live`, `logs` and `--once` run.

    doctor/    every precondition checked in order, one result each, with the fix; `live` is the
               first-hour report on a real Mac
    once       one pass of every step, for a manual test
    logview    our own JSON-lines log, parsed, filtered and formatted for people

Only reads what the relay keeps and calls the other packages' steps; printing is `cli`'s.
May import: everything below the daemon.
"""
