"""The console commands (one module per command).

OpenMP reads OMP_WAIT_POLICY once, when torch loads it, so it is set here, before any command
imports torch: PASSIVE makes idle OpenMP threads sleep instead of spinning. Spinning threads take
the cores from each other and from other processes on a busy machine (docs/performance.md,
"Threads on a busy machine"). A value the user set is kept.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
