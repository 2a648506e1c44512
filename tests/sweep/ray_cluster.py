"""A 2-node Ray cluster on this machine, driven over stdin (`kill-worker`, `stop`) by the cluster test.

Run as a script so its Ray processes live apart from the test process (which may hold its own Ray).
Prints one JSON line with the address and node ids once both nodes are up.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray.cluster_utils import Cluster  # after the environment it reads


def main() -> None:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}, shutdown_at_exit=True
    )
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    info = {"address": cluster.address, "head": cluster.head_node.node_id, "worker": worker.node_id}
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() == "kill-worker":
            cluster.remove_node(worker, allow_graceful=False)  # like a machine dying: SIGKILL, no drain
            print("killed", flush=True)
        elif line.strip() == "stop":
            break
    cluster.shutdown()


if __name__ == "__main__":
    main()
