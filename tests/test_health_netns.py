"""A real slow link: each rank on its own network-namespace host (veth pairs to a bridge in a
switch namespace), one host's link slowed by `tc` (netem delay and rate where the kernel has
netem, else a tbf rate cap, as on this project's CI kernel), gloo over those links. The health
stage must name that host. Needs root (ip netns, tc); namespaces are removed even on failure.

Ranks are forked from this process (torch and megatron-core already imported) by the local
launcher's `fork_ranks`: each joins the run's store on the launcher's loopback first, then
enters its host's network namespace and a UTS namespace with its own host name, so only gloo's
traffic goes over the links.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import layout, require_root
from mimo_launch.launchers.local_launcher import fork_ranks
from mimo_launch.rank.rank_runner import RankJob, run_rank
from mimo_launch.reports.report import read_report
from mimo_launch.settings.health_config import HealthSettings

HOSTS = 4
SLOW = 3  # the host whose link gets the delay
CLONE_NEWNET, CLONE_NEWUTS = 0x40000000, 0x04000000
SUBNET = "10.77.0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class NamespaceHosts:
    """`HOSTS` namespaces `<prefix>h<i>` (eth0 at 10.77.0.<i+1>) on a bridge in `<prefix>sw`."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.switch = f"{prefix}sw"
        self.hosts = [f"{prefix}h{i}" for i in range(HOSTS)]

    def __enter__(self) -> NamespaceHosts:
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, ns in enumerate(self.hosts):
                _ip("netns", "add", ns)
                host_end, switch_end = f"{self.prefix}v{i}", f"{self.prefix}p{i}"
                _ip("link", "add", host_end, "type", "veth", "peer", "name", switch_end)
                _ip("link", "set", host_end, "netns", ns)
                _ip("link", "set", switch_end, "netns", self.switch)
                _ip("-n", ns, "link", "set", host_end, "name", "eth0")
                _ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", self.switch, "link", "set", switch_end, "master", "br0", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def slow_down(self, i: int, rate: str = "20mbit") -> str:
        """Slow host i's link both ways: `tc netem` delay where the kernel has it, else a
        token-bucket rate cap (`tbf`); returns the qdisc used."""
        ends = ((self.hosts[i], "eth0"), (self.switch, f"{self.prefix}p{i}"))
        for qdisc in (["netem", "delay", "20ms", "rate", rate],
                      ["tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"]):
            done = [subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev",
                                    dev, "root", *qdisc], capture_output=True, timeout=30)
                    .returncode == 0 for ns, dev in ends]
            if all(done):
                return qdisc[0]
        raise RuntimeError(f"neither netem nor tbf could slow {self.hosts[i]}'s link")

    def __exit__(self, *exc) -> None:
        for ns in [*self.hosts, self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def enter_host(ns: str, hostname: str) -> None:
    """Move this process into network namespace `ns` and a UTS namespace named `hostname`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0 or libc.unshare(CLONE_NEWUTS) != 0:
        raise OSError(ctypes.get_errno(), f"cannot enter namespace {ns}")
    os.close(fd)
    socket.sethostname(hostname)
    os.environ["GLOO_SOCKET_IFNAME"] = "eth0"


@pytest.mark.timeout(120)
def test_a_slow_link_names_its_host(tmp_path: Path):
    require_root("network namespaces and tc netem")
    run_dir = tmp_path / "run"
    # TP2 x DP2: every rank is in a tp and a dp group, each with a different peer host
    job = RankJob(layout=layout(language=dict(tp=2, dp=2)), world_size=HOSTS,
                  run_dir=str(run_dir), timeout_s=30,
                  health=HealthSettings(sizes=(65536,), warmup=1, iters=5, fail=True),
                  launcher_concludes=False)  # no launcher here: rank 0 writes report.json

    with NamespaceHosts(f"mh{os.getpid() % 100000}") as hosts:
        hosts.slow_down(SLOW)

        def body(rank: int, store) -> int:
            enter_host(hosts.hosts[rank], f"nshost{rank}")
            return run_rank(job, rank, store)

        run = fork_ranks(HOSTS, run_dir, job.timeout_s, body, watchdog_s=90)
    logs = "\n".join((run_dir / "logs" / f"rank{r}.log").read_text()[-1500:]
                     for r in range(HOSTS))
    assert run.ok, logs
    report = read_report(run_dir)
    assert report.hosts == [f"nshost{r}" for r in range(HOSTS)]
    health = report.health
    assert health["suspects"]["nodes"] == [f"nshost{SLOW}"], health["suspects"]
    assert health["suspects"]["ranks"] == [SLOW]
    assert all(r["where"] == "inter-node" for r in health["rows"])
    assert report.exit_code == 4 and health["headline"].startswith(
        f"health PROBLEM: node(s) nshost{SLOW} and rank(s) {SLOW} slow")
