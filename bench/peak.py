"""Run a command; print its CPU seconds and peak RSS (MiB) as JSON on stderr's last line.

A fresh process per measured run: RUSAGE_CHILDREN's ru_maxrss is the largest descendant
ever, so only a wrapper of its own gives each run its own peak.

    python -m bench.peak CMD [ARGS...]
"""

import json
import resource
import subprocess
import sys

done = subprocess.run(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}),
      file=sys.stderr)
sys.exit(done.returncode)
