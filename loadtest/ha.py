"""`make bench` on a highly available cluster: 3 etcd + 3 Patroni nodes (tests/ha/cluster.py) with
synchronous replication (a commit is acknowledged once a standby has flushed it). pgbench TPC-B
and the signed redemptions run against the same cluster in the same command, so the ratio says
what the replication round trip costs each of them.

    python -m loadtest.ha [loadtest.bench's options]      # make bench-ha
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.ha.cluster import Cluster


def main() -> None:
    cluster = Cluster()
    try:
        cluster.start()
        print(f"cluster up: {[(m['name'], m['role']) for m in cluster.members()]}", file=sys.stderr)
        env = {**os.environ, "DATABASE_URL": cluster.dsn()}
        code = subprocess.run(
            [sys.executable, "-m", "loadtest.bench", *sys.argv[1:]], env=env, check=False
        ).returncode
    finally:
        cluster.stop()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
