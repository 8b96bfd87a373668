"""Reliability suite: prints the figures each test recorded (``relsupport.record``)."""

from __future__ import annotations

import relsupport


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not relsupport.FIGURES:
        return
    tr = terminalreporter
    mode = "soak" if relsupport.SOAK else "ci"
    tr.write_sep("=", f"reliability figures (backend {relsupport.backend()}, {mode} mode)")
    for test, figs in relsupport.FIGURES:
        tr.write_line(f"{test}: " + " ".join(f"{k}={v}" for k, v in figs.items()))
    if relsupport.TOTALS:
        tr.write_line(
            "totals: " + " ".join(f"{k}={v}" for k, v in sorted(relsupport.TOTALS.items()))
        )
