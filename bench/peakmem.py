"""Peak resident memory of this process, for the benches' child processes.

Not getrusage's ru_maxrss: on Linux a child started by fork + exec starts with its parent's
resident size at the fork in ru_maxrss (a 2 GB parent made a 14 MB child report 2,075 MB),
so a bench whose parent held a model's outputs overstated its children's peaks (real_matrix:
DNSMOS's 50% DP run 2,273 MB reported, 1,294 MB its own). VmHWM in /proc/self/status is the
process's own high-water mark; ru_maxrss where there is no /proc.
"""

from __future__ import annotations

import resource


def peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
