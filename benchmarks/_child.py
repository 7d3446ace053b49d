"""Run a command in a child process and measure its wall time and its own peak RSS.

`ru_maxrss` from `wait4` is not the child's own peak on Linux: the high-water mark of the
parent's memory image, copied at fork, is kept across exec, so a benchmark holding a 3 h
broadcast in memory reported 1.5 GB for a monitor that never used more than 0.87 GB
(`/usr/bin/time`: 865 MB). The child's `VmHWM` (/proc/PID/status) counts only its own
image after exec; it is read every 50 ms until the child exits (it only grows).
"""

import subprocess
import threading
import time


def _vm_hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def run_child(command, **popen_kwargs):
    """-> (returncode, stdout, stderr, wall seconds, peak RSS in bytes of the child itself)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen_kwargs)
    peak = {"kb": 0, "seen": False}
    done = threading.Event()

    def watch():
        while not done.is_set():
            kb = _vm_hwm_kb(child.pid)
            if kb is not None:
                peak["kb"], peak["seen"] = max(peak["kb"], kb), True
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = child.communicate()
    done.set()
    watcher.join()
    wall = time.perf_counter() - started
    if not peak["seen"]:  # no /proc (not Linux): the kernel's figure, parent image included
        import resource

        peak["kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return child.returncode, stdout, stderr, wall, peak["kb"] * 1024
