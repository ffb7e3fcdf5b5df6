"""The default thread count and OpenMP wait policy of the console commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gtasr_deploy.engines.threads import busy_cpus, choose_threads, usable_cpus

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


def test_commands_set_passive_waiting_before_torch_loads():
    code = ("import sys, os; import gtasr_deploy; assert 'torch' not in sys.modules; "
            "import gtasr_deploy.cli.upscale; print(os.environ['OMP_WAIT_POLICY'])")
    assert _python(code) == "PASSIVE"


def test_a_wait_policy_the_user_set_is_kept():
    assert _python("import os, gtasr_deploy.cli.bench; print(os.environ['OMP_WAIT_POLICY'])",
                   OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


@pytest.mark.parametrize("usable,busy,expected", [(2, 0.0, 2), (2, 0.3, 2), (2, 1.0, 1), (2, 1.7, 1), (2, 9.0, 1),
                                                  (8, 2.2, 6), (4, None, 4)])
def test_threads_are_the_cpus_other_processes_leave_idle(usable, busy, expected):
    choice = choose_threads(usable=usable, busy=busy)
    assert choice.threads == expected
    assert str(expected) in choice.describe()


def test_a_process_spinning_on_a_core_is_seen():
    if usable_cpus() < 2:
        pytest.skip("needs at least 2 usable CPUs")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = busy_cpus(0.5)
        choice = choose_threads(busy=busy)
    finally:
        spinner.kill()
        spinner.wait()
    if busy is None:
        pytest.skip("/proc/stat is not readable here")
    assert busy >= 0.7  # the spinner alone keeps one CPU busy (others on the machine only add)
    assert choice.threads <= usable_cpus() - 1
