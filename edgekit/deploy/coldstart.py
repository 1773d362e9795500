"""Child process for the cold-first-result measurement: ``python -m edgekit.deploy.coldstart DIR SEQ THREADS``.

Prints one JSON line with wall-clock timestamps (time.time()) taken after the artifact is
loaded and after the first output, and the process's peak RSS. Imports only the deploy
side, as a device would.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec,
    so a child would report its parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    from edgekit.deploy.profile import fixed_length_text
    from edgekit.deploy.runtime import Predictor
    from edgekit.deploy.targets.base import TargetOptions

    path, seq_len, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pred = Predictor(path, options=TargetOptions(threads=threads or None), verify=False).__enter__()
    loaded = time.time()
    feed = pred.tokenizer([fixed_length_text(pred, seq_len)], pad_to=seq_len)
    pred.run(feed)
    first = time.time()
    rss_mb = peak_rss_mb()
    print(json.dumps({"loaded": loaded, "first_output": first, "peak_rss_mb": rss_mb, "torch_imported": "torch" in sys.modules}))


if __name__ == "__main__":
    main()
