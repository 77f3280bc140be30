#!/usr/bin/env python3
"""Network group of the chironfs benchmark. Run it through bench/net.sh (one command).

Servers: N sshd on 127.0.0.1, each behind its own `netdelay` (tools/netdelay: a TCP proxy
delaying every byte a settable time each way; this kernel has no netem). Every SSHFS mount
(chironfs's replicas and the reference) uses the same cipher and options. For each delay:

- sshfs-1: ONE SSHFS mount of server 1 (the reference: ratios are system / sshfs-1);
- chironfs-2, chironfs-3: chironfs over SSHFS mounts of servers 1..N.

Slow-replica case: server 1 at --slow ms, server 2 at --fast ms; per-operation latencies
(median) of a 4 KiB read (cold), a 4 KiB write + fsync and a create, on sshfs-fast, sshfs-slow
and chironfs over both (slow one listed first; and slow one as a `:` low-priority replica).

Round trips: with --count (and always in the report), the SFTP requests each SSHFS mount sent
per operation (sshfs -o sshfs_debug, client side), for create/write/close/chmod/rename/unlink.

CPU: the CPU time (user+sys) of every process of the system (chironfs, sshfs and its ssh,
the sshd sessions, the proxies), per MB moved, next to each throughput.
"""

import argparse
import datetime
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (shared helpers: sh, fio, metadata, drop_caches, ...)

from bench import log, sh, fio, drop_caches, mounted, abort_fuse  # noqa: E402

CIPHER = "aes128-gcm@openssh.com"
TICK = os.sysconf("SC_CLK_TCK")

# (key, label, unit, bytes-moved-or-None)
WORKLOADS = [
    ("seqwrite", "seq write 1M +fsync", "MB/s"),
    ("seqread_cold", "seq read cold", "MB/s"),
    ("randread_1", "rand read 4k 1 job (cold)", "IOPS"),
    ("randwrite_1", "rand write 4k 1 job", "IOPS"),
    ("randwrite_4", "rand write 4k 4 jobs", "IOPS"),
    ("create", "create 4k files", "files/s"),
    ("stat", "stat files", "files/s"),
    ("delete", "delete files", "files/s"),
    ("untar", "untar crate", "files/s"),
    ("cat", "cat every file", "files/s"),
]
CPU_KEYS = {"seqwrite", "seqread_cold"}
COUNT_OPS = ["create", "write", "close", "chmod", "rename", "unlink"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_table():
    """{pid: (ppid, cpu ticks)} of every process."""
    t = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            t[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
        except (OSError, IndexError, ValueError):
            pass
    return t


def tree_cpu(roots):
    """CPU seconds of ROOTS and all their descendants (alive now)."""
    t = proc_table()
    kids = {}
    for pid, (ppid, _) in t.items():
        kids.setdefault(ppid, []).append(pid)
    seen, todo, ticks = set(), list(roots), 0
    while todo:
        p = todo.pop()
        if p in seen or p not in t:
            continue
        seen.add(p)
        ticks += t[p][1]
        todo.extend(kids.get(p, []))
    return ticks / TICK


class Server:
    """An sshd on loopback and its delaying proxy."""

    def __init__(self, i, tmp, keys, netdelay):
        self.i, self.keys, self.netdelay = i, keys, netdelay
        self.data = os.path.join(tmp, f"srv{i}")
        os.makedirs(self.data)
        self.port = free_port()
        self.pport = None
        self.proxy = None
        self.delay = None
        conf = os.path.join(tmp, f"sshd{i}.conf")
        self.pidfile = os.path.join(tmp, f"sshd{i}.pid")
        with open(conf, "w") as f:
            f.write(f"""ListenAddress 127.0.0.1
Port {self.port}
HostKey {keys}/host_key
PidFile {self.pidfile}
AuthorizedKeysFile {keys}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
Ciphers {CIPHER}
Compression no
Subsystem sftp internal-sftp
LogLevel ERROR
""")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        sh(["/usr/sbin/sshd", "-f", conf, "-E", os.path.join(tmp, f"sshd{i}.log")])
        for _ in range(100):
            if os.path.exists(self.pidfile) and os.path.getsize(self.pidfile):
                break
            time.sleep(0.05)
        with open(self.pidfile) as f:
            self.pid = int(f.read())

    def set_delay(self, up, down):
        """(Re)starts the proxy with UP/DOWN ms each way; no-op if unchanged."""
        if self.delay == (up, down) and self.proxy:
            return
        self.stop_proxy()
        self.pport = free_port()
        self.proxy = subprocess.Popen(
            [self.netdelay, f"127.0.0.1:{self.pport}", f"127.0.0.1:{self.port}", str(up),
             str(down)], stdout=subprocess.PIPE, text=True)
        if self.proxy.stdout.readline().strip() != "ready":
            raise RuntimeError("netdelay did not start")
        self.delay = (up, down)

    def stop_proxy(self):
        if self.proxy:
            self.proxy.kill()
            self.proxy.wait()
            self.proxy = None

    def stop(self):
        self.stop_proxy()
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


class SshfsMount:
    """One sshfs mount (foreground process, so we know its pid) of DIR on SERVER."""

    def __init__(self, server, remote_dir, mnt, debug_log=None):
        self.server, self.mnt, self.debug_log = server, mnt, debug_log
        os.makedirs(remote_dir, exist_ok=True)
        os.makedirs(mnt, exist_ok=True)
        opts = (f"port={server.pport},Ciphers={CIPHER},Compression=no,"
                "StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,"
                f"IdentityFile={server.keys}/client_key,BatchMode=yes,LogLevel=ERROR,"
                "ServerAliveInterval=5,ServerAliveCountMax=3")
        if debug_log:
            opts += ",sshfs_debug"
        err = open(debug_log or os.devnull, "w")
        self.proc = subprocess.Popen(["sshfs", "-f", "-o", opts, f"root@127.0.0.1:{remote_dir}",
                                      mnt], stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        for _ in range(200):
            if mounted(mnt):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshfs exited {self.proc.returncode} for {mnt}")
            time.sleep(0.05)
        raise RuntimeError(f"sshfs did not mount {mnt}")

    def requests(self):
        """{SFTP request type: count} logged so far (debug mounts only)."""
        c = {}
        with open(self.debug_log, "rb") as f:
            for line in f.read().replace(b"\0", b"").decode(errors="replace").splitlines():
                m = re.match(r"\s*\[\d+\] ([A-Z_@.a-z0-9]+)\s*$", line)
                if m:
                    c[m.group(1)] = c.get(m.group(1), 0) + 1
        return c

    def unmount(self):
        if mounted(self.mnt):
            r = subprocess.run(["umount", self.mnt], capture_output=True)
            if r.returncode != 0:
                abort_fuse(self.mnt)
                subprocess.run(["umount", "-l", self.mnt], capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class NetSystem:
    """sshfs-1 (one mount) or chironfs over the SSHFS mounts of SERVERS."""

    def __init__(self, name, servers, tag, a, low=()):
        self.name, self.servers, self.tag, self.a, self.low = name, servers, tag, a, low
        self.base = os.path.join(a.tmp, "sys", tag)
        self.mounts, self.pid, self.mnt = [], None, None

    def mount(self, debug=False):
        os.makedirs(self.base)
        for s in self.servers:
            dbg = os.path.join(self.base, f"sshfs{s.i}.dbg") if debug else None
            self.mounts.append(SshfsMount(s, os.path.join(s.data, self.tag),
                                          os.path.join(self.base, f"r{s.i}"), dbg))
        if not self.name.startswith("chironfs"):
            self.mnt = self.mounts[0].mnt
        else:
            self.mnt = os.path.join(self.base, "mnt")
            os.makedirs(self.mnt)
            reps = [(":" if m.server.i in self.low else "") + m.mnt for m in self.mounts]
            cmd = [self.a.chironfs, "-o", "allow_other",
                   "--status-file", os.path.join(self.base, "status"),
                   "-c", os.path.join(self.base, "ctl.sock"),
                   "-l", os.path.join(self.base, "daemon.log"), "=".join(reps), self.mnt]
            sh(cmd, timeout=60)
            for _ in range(100):
                if mounted(self.mnt):
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"{self.name}: not mounted")
            self.pid = bench.find_daemon("chironfs", self.mnt)
        self.workdir = os.path.join(self.mnt, "w")
        os.mkdir(self.workdir)

    def cpu(self):
        roots = [m.proc.pid for m in self.mounts] + [s.pid for s in self.servers]
        roots += [s.proxy.pid for s in self.servers if s.proxy]
        if self.pid:
            roots.append(self.pid)
        return tree_cpu(roots)

    def unmount(self):
        if self.pid and mounted(self.mnt):
            r = subprocess.run(["umount", self.mnt], capture_output=True)
            if r.returncode != 0:
                abort_fuse(self.mnt)
                subprocess.run(["umount", "-l", self.mnt], capture_output=True)
            for _ in range(100):
                if not bench.pid_alive(self.pid):
                    break
                time.sleep(0.1)
        for m in reversed(self.mounts):
            m.unmount()
        self.mounts = []


def lat_ms(fn, n):
    """Median latency of FN(i) over N calls, ms."""
    ts = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


class Runner:
    def __init__(self, a, tar_path, tar_files):
        self.a, self.tar_path, self.tar_files = a, tar_path, tar_files

    def record(self, sysm, key, fn, res, errors, mb=None):
        t0 = time.time()
        c0 = sysm.cpu()
        try:
            v = fn()
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(f"{sysm.tag} {key}: {e}")
            log(f"  {sysm.tag:24} {key:13} ERROR {e}")
            if isinstance(e, subprocess.TimeoutExpired):
                abort_fuse(sysm.mnt)
            return
        cpu = sysm.cpu() - c0
        res.setdefault(key, []).append(v)
        if mb:
            res.setdefault(key + "_cpu", []).append(cpu / mb)
        log(f"  {sysm.tag:24} {key:13} {v:12,.1f}   ({time.time() - t0:.1f} s, cpu {cpu:.2f} s)")

    def session(self, sysm, res, errors):
        a = self.a
        w = sysm.workdir
        f = os.path.join(w, "seq.dat")
        mib = a.seq_mib
        to = a.timeout

        def seqwrite():
            job = fio(["--name=sw", f"--filename={f}", "--rw=write", "--bs=1M",
                       f"--size={mib}M", "--end_fsync=1", "--invalidate=0"], to)
            return job["write"]["bw_bytes"] / 1e6
        self.record(sysm, "seqwrite", seqwrite, res, errors, mb=mib * 1.048576)
        if not os.path.exists(f):
            return

        def seqread_cold():
            drop_caches()
            job = fio(["--name=sr", f"--filename={f}", "--rw=read", "--bs=1M",
                       f"--size={mib}M", "--invalidate=1"], to)
            return job["read"]["bw_bytes"] / 1e6
        self.record(sysm, "seqread_cold", seqread_cold, res, errors, mb=mib * 1.048576)

        for rw, jobs in (("randread", 1), ("randwrite", 1), ("randwrite", 4)):
            def rand(rw=rw, jobs=jobs):
                if rw == "randread":
                    drop_caches()
                job = fio([f"--name={rw}", f"--filename={f}", f"--rw={rw}", "--bs=4k",
                           f"--size={mib}M", f"--numjobs={jobs}", "--invalidate=0",
                           "--time_based=1", f"--runtime={a.rand_time}", "--norandommap=1",
                           "--randrepeat=0", "--fadvise_hint=random"], a.rand_time + to)
                return job["read" if rw == "randread" else "write"]["iops"]
            self.record(sysm, f"{rw}_{jobs}", rand, res, errors)

        phases = {}

        def create():
            phases.update(bench.metadata(os.path.join(w, "meta"), a.meta_files, to))
            return phases["create"]
        self.record(sysm, "create", create, res, errors)
        if "stat" in phases:
            res.setdefault("stat", []).append(phases["stat"])
            res.setdefault("delete", []).append(phases["delete"])
            log(f"  {sysm.tag:24} stat {phases['stat']:,.1f}  delete {phases['delete']:,.1f}")

        dest = os.path.join(w, "tree")
        os.mkdir(dest)

        def untar():
            t0 = time.perf_counter()
            sh(["tar", "-xf", self.tar_path, "-C", dest], timeout=to)
            return self.tar_files / (time.perf_counter() - t0)
        self.record(sysm, "untar", untar, res, errors)

        def cat():
            drop_caches()
            t0 = time.perf_counter()
            sh(f"find {dest} -type f -exec cat {{}} + > /dev/null", shell=True, timeout=to)
            return self.tar_files / (time.perf_counter() - t0)
        self.record(sysm, "cat", cat, res, errors)

    def latencies(self, sysm, res, errors):
        """Per-operation medians (ms): cold 4 KiB read, 4 KiB write + fsync, create."""
        w = sysm.workdir
        n = self.a.lat_ops
        f = os.path.join(w, "lat.dat")
        stride = 256 << 10
        with open(f, "wb") as fh:
            fh.write(b"\x5a" * stride * n)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            drop_caches()
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            offs = [i * stride for i in range(n)]
            random.shuffle(offs)
            res.setdefault("lat_read", []).append(lat_ms(lambda i: os.pread(fd, 4096, offs[i]),
                                                         n))
            os.close(fd)
            fd = os.open(f, os.O_WRONLY)

            def wr(i):
                os.pwrite(fd, b"\xa5" * 4096, offs[i])
                os.fsync(fd)
            res.setdefault("lat_write", []).append(lat_ms(wr, n))
            os.close(fd)
            d = os.path.join(w, "latc")
            os.mkdir(d)
            res.setdefault("lat_create", []).append(lat_ms(
                lambda i: os.close(os.open(os.path.join(d, f"c{i}"),
                                           os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)), n))
            log(f"  {sysm.tag:24} latency read {res['lat_read'][-1]:.2f} write+fsync "
                f"{res['lat_write'][-1]:.2f} create {res['lat_create'][-1]:.2f} ms")
        except Exception as e:  # noqa: BLE001
            errors.append(f"{sysm.tag} latency: {e}")
            log(f"  {sysm.tag} latency: {e}")

    def count(self, sysm):
        """SFTP requests per operation, per SSHFS mount: {op: [{type: n} per mount]}, the
        median over the repetitions of each type (a background request, the health check's
        statvfs or a lease renewal, lands in few windows and drops out), plus "idle": the
        background requests per second of each mount."""
        w = sysm.workdir
        reps = self.a.count_reps
        seen = {op: [[] for _ in sysm.mounts] for op in COUNT_OPS}
        d = os.path.join(w, "cnt")
        os.mkdir(d)
        time.sleep(1.5)
        t0, idle0 = time.time(), [m.requests() for m in sysm.mounts]
        time.sleep(5)
        idle = [{t: (v - b.get(t, 0)) / (time.time() - t0) for t, v in c.items()
                 if v - b.get(t, 0)} for b, c in zip(idle0, [m.requests() for m in sysm.mounts])]

        def step(op, fn):
            before = [m.requests() for m in sysm.mounts]
            fn()
            time.sleep(0.05)  # the kernel's RELEASE after close is asynchronous
            for k, (b, c) in enumerate(zip(before, [m.requests() for m in sysm.mounts])):
                seen[op][k].append({t: v - b.get(t, 0) for t, v in c.items()
                                    if v - b.get(t, 0)})
        for r in range(reps):
            # A mutation first, then a pause: the journal compaction it triggers (at most once
            # a second, after a mutation) falls before the measured operations, not in them.
            os.chmod(d, 0o755)
            time.sleep(0.4)
            p = os.path.join(d, f"f{r}")
            q = os.path.join(d, f"g{r}")
            fd = None

            def create():
                nonlocal fd
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            step("create", create)
            step("write", lambda: os.write(fd, b"x" * 4096))
            step("close", lambda: os.close(fd))
            step("chmod", lambda: os.chmod(p, 0o600))
            step("rename", lambda: os.rename(p, q))
            step("unlink", lambda: os.unlink(q))
            time.sleep(1.1)
        out = {}
        for op, per in seen.items():
            out[op] = []
            for samples in per:
                types = {t for s in samples for t in s}
                med = {t: statistics.median(s.get(t, 0) for s in samples) for t in types}
                out[op].append({t: v for t, v in med.items() if v})
        out["idle /s"] = idle
        return out


def fmt(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" if v >= 10 else f"{v:,.2f}"


def table(systems, med, ref):
    lines = ["| workload | unit | " + " | ".join(systems) + " |",
             "|---|---|" + "---:|" * len(systems)]
    for key, label, unit in WORKLOADS:
        row = [med.get(s, {}).get(key) for s in systems]
        if all(v is None for v in row):
            continue
        base = med.get(ref, {}).get(key)
        cells = []
        for s, v in zip(systems, row):
            c = fmt(v)
            if v is not None and base and s != ref:
                c += f" ({v / base:.2f}x)"
            cpu = med.get(s, {}).get(key + "_cpu")
            if cpu is not None:
                c += f", {cpu * 1000:.1f} ms CPU/MB"
            cells.append(c)
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread(samples):
    """'±N%' half-range of the samples around their median (noise), or ''."""
    if len(samples) < 2:
        return ""
    m = statistics.median(samples)
    return f" ±{(max(samples) - min(samples)) / 2 / m * 100:.0f}%" if m else ""


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tmp", required=True)
    p.add_argument("--chironfs", required=True)
    p.add_argument("--netdelay", required=True)
    p.add_argument("--tarball", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--delays", default="0.25,1", help="ms each way, comma-separated")
    p.add_argument("--slow", type=float, default=5.0)
    p.add_argument("--fast", type=float, default=0.25)
    p.add_argument("--repeat", type=int)
    p.add_argument("--rand-time", type=int)
    p.add_argument("--only", default="sshfs-1,chironfs-2,chironfs-3")
    p.add_argument("--parts", default="table,slow,count")
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    a = p.parse_args()
    d = (dict(seq_mib=32, rand_time=3, meta_files=200, lat_ops=40, repeat=1, count_reps=5,
              timeout=300) if a.quick else
         dict(seq_mib=128, rand_time=10, meta_files=1000, lat_ops=100, repeat=3, count_reps=9,
              timeout=900))
    for k, v in d.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    delays = [float(x) for x in a.delays.split(",") if x]
    systems = [s.strip() for s in a.only.split(",") if s.strip()]
    parts = set(a.parts.split(","))
    nserv = max([int(s.split("-")[1]) for s in systems if s.startswith("chironfs")] + [2])

    started = datetime.datetime.now()
    tar_path, tar_files = bench.prepare_tarball(a.tarball, a.tmp)
    keys = os.path.join(a.tmp, "keys")
    os.makedirs(keys)
    sh(f". {bench.ROOT}/tests/support/sshd.sh && sshd_keys {keys} chironfs-bench-net",
       shell=True)
    runner = Runner(a, tar_path, tar_files)
    servers, live = [], []
    raw = {"started": started.isoformat(timespec="seconds"), "machine": bench.machine_info(),
           "settings": {k: getattr(a, k) for k in ["quick", "repeat", "rand_time", "seq_mib",
                                                   "meta_files", "lat_ops", "count_reps"]},
           "delays": delays, "systems": systems, "cipher": CIPHER}
    errors = []

    def handle_term(_s, _f):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(130)
    signal.signal(signal.SIGTERM, handle_term)
    signal.signal(signal.SIGINT, handle_term)
    serial = [0]

    def run_sys(name, srvs, fn, low=(), debug=False):
        serial[0] += 1
        sysm = NetSystem(name, srvs, f"{name}-{serial[0]}", a, low)
        live.append(sysm)
        try:
            sysm.mount(debug)
            return fn(sysm)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{sysm.tag}: {e}")
            log(f"  {sysm.tag}: {e}")
        finally:
            sysm.unmount()
            live.remove(sysm)
            if sysm.name.startswith("chironfs"):
                diff = subprocess.run(
                    ["diff", "-rq", "-x", ".chironfs"] +
                    [os.path.join(s.data, sysm.tag) for s in srvs[:2]],
                    capture_output=True, text=True)
                if diff.returncode:
                    errors.append(f"{sysm.tag}: replicas differ: {diff.stdout[:300]}")
                    log(f"  {sysm.tag}: replicas differ")
                logf = os.path.join(sysm.base, "daemon.log")
                if os.path.exists(logf):
                    for l in open(logf, errors="replace"):
                        if any(w in l for w in ("ERROR", "ALERT", "CRIT")):
                            errors.append(f"{sysm.tag} log: {l.strip()[-200:]}")
            for s in srvs:
                subprocess.run(["rm", "-rf", os.path.join(s.data, sysm.tag)])

    try:
        servers = [Server(i, a.tmp, keys, a.netdelay) for i in range(1, nserv + 1)]
        raw["table"] = {}
        if "table" in parts:
            for dl in delays:
                for s in servers:
                    s.set_delay(dl, dl)
                res = {s: {} for s in systems}
                for rnd in range(a.repeat):
                    log(f"== delay {dl} ms each way, round {rnd + 1}/{a.repeat}")
                    for s in systems:
                        n = int(s.split("-")[1])
                        run_sys(s, servers[:n], lambda m, s=s: runner.session(m, res[s], errors))
                raw["table"][str(dl)] = res
        if "slow" in parts:
            log(f"== slow replica: server 1 at {a.slow} ms, server 2 at {a.fast} ms each way")
            servers[0].set_delay(a.slow, a.slow)
            servers[1].set_delay(a.fast, a.fast)
            lat = {}
            cases = [("sshfs-fast", [servers[1]], ()), ("sshfs-slow", [servers[0]], ()),
                     ("chironfs-2", servers[:2], ()), ("chironfs-2-lowslow", servers[:2], (1,))]
            for rnd in range(a.repeat):
                for name, srvs, low in cases:
                    lat.setdefault(name, {})
                    run_sys(name if name.startswith("sshfs") else "chironfs-2", srvs,
                            lambda m, name=name: runner.latencies(m, lat[name], errors), low)
            raw["slow"] = lat
        if "count" in parts:
            log("== round trips per operation (sshfs_debug)")
            for s in servers:
                s.set_delay(0, 0)
            cnt = {}
            for name in ("sshfs-1", "chironfs-2"):
                n = 1 if name == "sshfs-1" else 2
                cnt[name] = run_sys(name, servers[:n], runner.count, debug=True)
            raw["count"] = cnt
    finally:
        for sysm in reversed(live):
            sysm.unmount()
        for s in servers:
            s.stop()

    finished = datetime.datetime.now()
    mins = (finished - started).total_seconds() / 60
    md = [f"## chironfs network benchmark, {started:%Y-%m-%d %H:%M}" +
          (" (--quick)" if a.quick else ""), "",
          f"Machine: {raw['machine']}.",
          f"Servers: sshd (internal-sftp) on 127.0.0.1, each behind tools/netdelay; every SSHFS "
          f"mount: sshfs 3.7, `Ciphers={CIPHER},Compression=no`, defaults otherwise. Median of "
          f"{a.repeat} interleaved round(s); seq file {a.seq_mib} MiB, random I/O {a.rand_time} s"
          f", metadata {a.meta_files} files of 4 KiB, tree {os.path.basename(a.tarball)} "
          f"({tar_files} files; cat after drop_caches). Run took {mins:.1f} min.",
          "Cells: `value (ratio to sshfs-1, one SSHFS mount of the same kind of server)`; "
          "CPU/MB = CPU time of chironfs + sshfs + ssh + sshd + proxies per MB moved.", ""]
    for dl, res in raw.get("table", {}).items():
        med = {s: {k: statistics.median(v) for k, v in r.items() if v} for s, r in res.items()}
        md.append(f"### {dl} ms each way ({float(dl) * 2:g} ms round trip)\n")
        md.append(table(systems, med, "sshfs-1"))
        if a.repeat > 1:
            noise = [f"{s} {k}{spread(v)}" for s, r in res.items() for k, v in r.items()
                     if not k.endswith("_cpu") and spread(v)]
            md.append("\nSpread (half-range/median) of the rounds: " + ", ".join(noise))
        md.append("")
    if "slow" in raw:
        md.append(f"### Slow replica: server 1 at {a.slow} ms, server 2 at {a.fast} ms each way"
                  "\n\nMedian latency per operation, ms (chironfs-2: `slow=fast` in that order;"
                  " lowslow: `:slow=fast`, the slow one low-priority):\n")
        md.append("| op | " + " | ".join(raw["slow"]) + " |")
        md.append("|---|" + "---:|" * len(raw["slow"]))
        for k, label in (("lat_read", "read 4 KiB (cold)"), ("lat_write", "write 4 KiB + fsync"),
                         ("lat_create", "create + close")):
            md.append(f"| {label} | " + " | ".join(
                fmt(statistics.median(v[k])) if v.get(k) else "-"
                for v in raw["slow"].values()) + " |")
        md.append("")
    if raw.get("count"):
        md.append("### SFTP requests per operation (each replica's SSHFS mount)\n")
        md.append("| op | " + " | ".join(
            f"{name} r{i + 1}" for name, per in raw["count"].items() if per
            for i in range(len(next(iter(per.values()))))) + " |")
        ncol = sum(len(next(iter(per.values()))) for per in raw["count"].values() if per)
        md.append("|---|" + "---:|" * ncol)
        for op in COUNT_OPS + ["idle /s"]:
            cells = []
            for per in raw["count"].values():
                if not per:
                    continue
                for c in per[op]:
                    tot = sum(c.values())
                    cells.append(f"{tot:.3g}: " + " ".join(f"{t} {v:.3g}" for t, v in sorted(c.items()))
                                 if tot else "0")
            md.append(f"| {op} | " + " | ".join(cells) + " |")
        md.append("")
    if errors:
        md.append("Problems seen:\n")
        md.extend(f"- {e}" for e in errors)
    text = "\n".join(md).rstrip() + "\n"
    os.makedirs(os.path.join(a.results, "raw"), exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(a.results, "raw", f"net-{stamp}.json"), "w") as f:
        json.dump(raw, f, indent=1, default=str)
    with open(os.path.join(a.results, f"net-{stamp}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.results, "latest-net-quick.md" if a.quick else "latest-net.md"),
              "w") as f:
        f.write(text)
    print(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
