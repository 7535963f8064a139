"""The launch floor: import torch once, fork W ranks that join a gloo world on a TCPStore the
parent hosts, barrier, and exit. Run as `python -m benchmarks.launch_floor W`; prints its phase
times as JSON on its last line."""

from __future__ import annotations

import time

T0 = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from datetime import timedelta  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

T_TORCH = time.perf_counter()


def main(world_size: int) -> int:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    pids, writers = [], []
    for rank in range(world_size):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            port = int.from_bytes(os.read(r, 4), "big")
            torch.set_num_threads(1)
            store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False,
                                  timeout=timedelta(seconds=60))
            dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
            dist.barrier()
            dist.destroy_process_group()
            os._exit(0)
        os.close(r)
        pids.append(pid)
        writers.append(w)
    store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=60))
    for w in writers:
        os.write(w, store.port.to_bytes(4, "big"))
        os.close(w)
    return max(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids)


if __name__ == "__main__":
    t_main = time.perf_counter()
    code = main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
    print(json.dumps({"python + torch import": T_TORCH - T0,
                      "ranks (fork to last exit)": time.perf_counter() - t_main}))
    sys.exit(code)
