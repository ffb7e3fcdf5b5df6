"""One way to stop: Ctrl-C, SIGTERM and SIGHUP all become ``KeyboardInterrupt`` while work runs.

Every surface that writes outputs (images, videos, the Ray batch driver) runs inside
:func:`signals_as_interrupt`, so a service manager's stop (SIGTERM) or a closed terminal (SIGHUP)
is handled exactly as Ctrl-C: temp files are removed by the ``finally`` clauses on the way out,
the summary is printed, and the process exits 130. Inside :meth:`Interrupts.held` (an output
being renamed into place and its completion record written) a signal waits until both are done,
so a kept output is always a recorded one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class Interrupts:
    """The handler of :data:`STOP_SIGNALS`; raises KeyboardInterrupt, or defers it inside :meth:`held`."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None

    def handler(self, signum, frame) -> None:
        if self.depth:
            self.pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise KeyboardInterrupt(f"signal {signum}")


INTERRUPTS = Interrupts()
_ROUTED: set[int] = set()  # the signals an active signals_as_interrupt block routes to INTERRUPTS


@contextlib.contextmanager
def signals_as_interrupt(enabled: bool = True) -> Iterator[None]:
    """Route SIGINT, SIGTERM and SIGHUP to :data:`INTERRUPTS` inside the block (main thread only;
    elsewhere Python cannot install handlers). A signal set to be ignored (``nohup``) stays
    ignored; a custom handler stays; nested blocks keep the outer routing."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current is signal.SIG_DFL or current is signal.default_int_handler:
            previous[signum] = signal.signal(signum, INTERRUPTS.handler)
    _ROUTED.update(previous)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        _ROUTED.difference_update(previous)


def reclaim() -> None:
    """Route the stop signals to :data:`INTERRUPTS` again inside a :func:`signals_as_interrupt`
    block, after a library took one over (``ray.init`` sets SIGTERM to ``sys.exit(15)``, which
    would end the run with exit code 15, no summary and no report). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _ROUTED:
        if signal.getsignal(signum) is not INTERRUPTS.handler:
            signal.signal(signum, INTERRUPTS.handler)
