#!/usr/bin/env python3
"""Network group of the chironfs benchmark. Run it through bench/net.sh (one command).

Servers, per transport, each on 127.0.0.1 behind its own `netdelay` (tools/netdelay: a TCP
proxy delaying every byte a settable time each way; this kernel has no netem):

- sshfs: N sshd (internal-sftp); every SSHFS mount uses the same cipher and options;
- nfs: N NFS-Ganesha (FSAL VFS, NFSv3 over TCP), mounted with fuse-nfs (tools/fuse-nfs, a
  FUSE client over libnfs: this kernel has no NFS client). Ganesha cannot serve NFSv3 without
  registering with rpcbind, so the run has its own rpcbind, in net.sh's private network
  namespace, with a private /run (nothing reaches the host's rpcbind).

For each delay and transport T (reference first; ratios are system / reference):

- T-1: ONE mount of server 1 (sshfs-1, nfs-1);
- chironfs over 2 and 3 mounts of servers 1..N (chironfs-2, chironfs-3 over SSHFS;
  chironfs-nfs-2, chironfs-nfs-3 over NFS).

Slow-replica case, per transport: server 1 at --slow ms, server 2 at --fast ms; per-operation
latencies (median) of a 4 KiB read (cold), a 4 KiB write + fsync and a create, on one mount of
the fast and of the slow server and chironfs over both (slow one listed first; and slow one as
a `:` low-priority replica).

Round trips (SSHFS only): the SFTP requests each SSHFS mount sent per operation (sshfs -o
sshfs_debug, client side), for create/write/close/chmod/rename/unlink. Neither ganesha nor
libnfs logs NFS requests in a countable form without a debug build, so NFS has no such table.

CPU: the CPU time (user+sys) of every process of the system (chironfs, the FUSE clients
sshfs+ssh or fuse-nfs, the servers sshd or ganesha, the proxies), per MB moved.
"""

import argparse
import datetime
import glob
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
    ("randread_4", "rand read 4k 4 jobs (cold)", "IOPS"),
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
TRANSPORTS = ("sshfs", "nfs")
# fuse-nfs: allow_other (chironfs reaches its replicas with the caller's credentials, which
# fuse-nfs passes on as the requests' AUTH_SYS uid and gid); its defaults otherwise.
FUSE_NFS_OPTS = ["-a"]


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


def wait_port(port, proc, what, log_path):
    """Waits until 127.0.0.1:PORT accepts a connection; raises if PROC exits first."""
    for _ in range(200):
        if proc.poll() is not None:
            tail = ""
            if os.path.exists(log_path):
                with open(log_path, errors="replace") as f:
                    tail = " | ".join(l.strip() for l in f.readlines()[-4:])
            raise RuntimeError(f"{what} exited {proc.returncode}: {tail}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} does not listen on port {port}")


def stop_proc(proc, timeout=10):
    """SIGTERM, then SIGKILL after TIMEOUT seconds; reaps it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    """A file server on loopback and its delaying proxy (subclasses: the kinds of server)."""

    kind = None

    def __init__(self, i, a):
        self.i, self.a = i, a
        self.data = os.path.join(a.tmp, f"{self.kind}-srv{i}")
        os.makedirs(self.data)
        self.port = free_port()
        self.pport = None
        self.proxy = None
        self.delay = None
        self.pid = self.start()

    def set_delay(self, up, down):
        """(Re)starts the proxy with UP/DOWN ms each way; no-op if unchanged."""
        if self.delay == (up, down) and self.proxy:
            return
        self.stop_proxy()
        self.pport = free_port()
        self.proxy = subprocess.Popen(
            [self.a.netdelay, f"127.0.0.1:{self.pport}", f"127.0.0.1:{self.port}", str(up),
             str(down)], stdout=subprocess.PIPE, text=True)
        if self.proxy.stdout.readline().strip() != "ready":
            raise RuntimeError("netdelay did not start")
        self.delay = (up, down)

    def stop_proxy(self):
        if self.proxy:
            self.proxy.kill()
            self.proxy.wait()
            self.proxy = None


class SshServer(Server):
    """sshd (internal-sftp), mounted with sshfs."""

    kind = "sshfs"

    def start(self):
        a, keys = self.a, self.a.keys
        conf = os.path.join(a.tmp, f"sshd{self.i}.conf")
        pidfile = os.path.join(a.tmp, f"sshd{self.i}.pid")
        with open(conf, "w") as f:
            f.write(f"""ListenAddress 127.0.0.1
Port {self.port}
HostKey {keys}/host_key
PidFile {pidfile}
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
        sh(["/usr/sbin/sshd", "-f", conf, "-E", os.path.join(a.tmp, f"sshd{self.i}.log")])
        for _ in range(100):
            if os.path.exists(pidfile) and os.path.getsize(pidfile):
                break
            time.sleep(0.05)
        with open(pidfile) as f:
            return int(f.read())

    def stop(self):
        self.stop_proxy()
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def mount(self, remote_dir, mnt, debug_log=None):
        opts = (f"port={self.pport},Ciphers={CIPHER},Compression=no,"
                "StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,"
                f"IdentityFile={self.a.keys}/client_key,BatchMode=yes,LogLevel=ERROR,"
                "ServerAliveInterval=5,ServerAliveCountMax=3")
        if debug_log:
            opts += ",sshfs_debug"
        return FuseMount(["sshfs", "-f", "-o", opts, f"root@127.0.0.1:{remote_dir}", mnt],
                         mnt, debug_log)


class NfsServer(Server):
    """NFS-Ganesha (FSAL VFS, NFSv3 over TCP, in the foreground with its own config, log, pid
    file and recovery directory), mounted with fuse-nfs. Its MOUNT port is reached directly,
    only at mount time; every NFS request goes through the proxy."""

    kind = "nfs"

    def start(self):
        d = os.path.join(self.a.tmp, f"ganesha{self.i}")
        os.makedirs(os.path.join(d, "recovery"))
        self.mnt_port = free_port()
        conf = os.path.join(d, "ganesha.conf")
        self.log_path = os.path.join(d, "ganesha.log")
        # No Bind_Addr: ganesha resolves it with AI_ADDRCONFIG, which finds no IPv4 address in
        # a namespace with only a loopback; the namespace is private, so any address is ours.
        with open(conf, "w") as f:
            f.write(f"""NFS_CORE_PARAM {{
    NFS_Port = {self.port};
    MNT_Port = {self.mnt_port};
    Protocols = 3;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    Plugins_Dir = {self.a.ganesha_plugins};
}}
NFSv4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = {d}/recovery;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
    Export_Id = 1;
    Path = {self.data};
    Pseudo = /export;
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3;
    Transports = TCP;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
""")
        self.proc = subprocess.Popen(
            ["ganesha.nfsd", "-F", "-f", conf, "-L", self.log_path, "-p",
             os.path.join(d, "ganesha.pid"), "-N", "NIV_EVENT"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, f"ganesha {self.i}", self.log_path)
        return self.proc.pid

    def stop(self):
        self.stop_proxy()
        stop_proc(self.proc)

    def mount(self, remote_dir, mnt, debug_log=None):
        url = f"nfs://127.0.0.1{remote_dir}?nfsport={self.pport}&mountport={self.mnt_port}"
        return FuseMount([self.a.fuse_nfs] + FUSE_NFS_OPTS + ["-n", url, "-m", mnt], mnt,
                         daemon="fuse-nfs")


class FuseMount:
    """One FUSE client mount at MNT: CMD runs in the foreground (its pid is the client's), or,
    with DAEMON (fuse-nfs, which always daemonizes), returns once mounted and the client is
    found by name and mount point."""

    def __init__(self, cmd, mnt, debug_log=None, daemon=None):
        self.mnt, self.debug_log, self.proc = mnt, debug_log, None
        os.makedirs(mnt, exist_ok=True)
        if daemon:
            sh(cmd, timeout=60)
            self.pid = bench.find_daemon(daemon, mnt)
            if not (mounted(mnt) and self.pid):
                raise RuntimeError(f"{daemon} did not mount {mnt}")
            return
        err = open(debug_log or os.devnull, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        self.pid = self.proc.pid
        for _ in range(200):
            if mounted(mnt):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited {self.proc.returncode} for {mnt}")
            time.sleep(0.05)
        raise RuntimeError(f"{cmd[0]} did not mount {mnt}")

    def requests(self):
        """{SFTP request type: count} logged so far (sshfs debug mounts only)."""
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
        if self.proc:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            return
        for _ in range(100):
            if not bench.pid_alive(self.pid):
                return
            time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)


class Rpcbind:
    """A private rpcbind for the NFS servers (ganesha registers NFSv3 and MOUNT with it, and
    refuses to start if it cannot). Needs net.sh's private network namespace, where port 111
    is ours; /run gets a private tmpfs first (in net.sh's private mount namespace), so neither
    rpcbind's socket nor ganesha's registration reaches the host's rpcbind."""

    def __init__(self, tmp):
        if os.environ.get("CHIRONFS_BENCH_NETNS") != "1":
            raise RuntimeError("NFS needs net.sh's private network namespace (unshare --net)")
        sh(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "chironfs-netbench-run", "/run"])
        os.makedirs("/run/rpcbind")
        self.proc = subprocess.Popen(["rpcbind", "-f"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        with open(os.path.join(tmp, "rpcbind.pid"), "w") as f:
            f.write(f"{self.proc.pid}\n")
        wait_port(111, self.proc, "rpcbind", "/dev/null")

    def stop(self):
        stop_proc(self.proc)


class NetSystem:
    """One mount of SERVERS[0] (a reference) or chironfs over the mounts of SERVERS."""

    def __init__(self, name, servers, tag, a, low=()):
        self.name, self.servers, self.tag, self.a, self.low = name, servers, tag, a, low
        self.chironfs = len(servers) > 1
        self.base = os.path.join(a.tmp, "sys", tag)
        self.mounts, self.pid, self.mnt = [], None, None

    def mount(self, debug=False):
        os.makedirs(self.base)
        for s in self.servers:
            dbg = os.path.join(self.base, f"{s.kind}{s.i}.dbg") if debug else None
            remote = os.path.join(s.data, self.tag)
            os.makedirs(remote)
            self.mounts.append(s.mount(remote, os.path.join(self.base, f"r{s.i}"), dbg))
        if not self.chironfs:
            self.mnt = self.mounts[0].mnt
        else:
            self.mnt = os.path.join(self.base, "mnt")
            os.makedirs(self.mnt)
            reps = [(":" if s.i in self.low else "") + m.mnt
                    for s, m in zip(self.servers, self.mounts)]
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
        roots = [m.pid for m in self.mounts] + [s.pid for s in self.servers]
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

        for rw, jobs in (("randread", 1), ("randread", 4), ("randwrite", 1), ("randwrite", 4)):
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


def system_name(transport, n):
    """sshfs-1, chironfs-2, chironfs-3 (SSHFS, as before NFS came); nfs-1, chironfs-nfs-2..."""
    if n == 1:
        return f"{transport}-1"
    return f"chironfs-{n}" if transport == "sshfs" else f"chironfs-{transport}-{n}"


def parse_system(name):
    """(transport, replicas) of a system name made by system_name."""
    for t in TRANSPORTS:
        for n in range(1, 10):
            if system_name(t, n) == name:
                return t, n
    raise SystemExit(f"unknown system {name} (see --help)")


def tool_versions():
    """Versions of the NFS pieces, for the report."""
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    g = re.search(r"Release\s*=\s*V?(\S+)", out(["ganesha.nfsd", "-v"]))
    return {"ganesha": g.group(1) if g else "?",
            "libnfs": out(["pkg-config", "--modversion", "libnfs"]) or "?",
            "libfuse": out(["pkg-config", "--modversion", "fuse"]) or "?"}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tmp", required=True)
    p.add_argument("--chironfs", required=True)
    p.add_argument("--netdelay", required=True)
    p.add_argument("--fuse-nfs")
    p.add_argument("--tarball", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--delays", default="0.25,1", help="ms each way, comma-separated")
    p.add_argument("--slow", type=float, default=5.0)
    p.add_argument("--fast", type=float, default=0.25)
    p.add_argument("--repeat", type=int)
    p.add_argument("--rand-time", type=int)
    p.add_argument("--transport", default="sshfs,nfs")
    p.add_argument("--only", help="systems (default: T-1 and chironfs over 2 and 3 of each T)")
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
    transports = [t for t in TRANSPORTS if t in a.transport.split(",")]
    if not transports or set(a.transport.split(",")) - set(TRANSPORTS):
        raise SystemExit(f"--transport: among {','.join(TRANSPORTS)}")
    systems = ([s.strip() for s in a.only.split(",") if s.strip()] if a.only else
               [system_name(t, n) for t in transports for n in (1, 2, 3)])
    systems = [s for s in systems if parse_system(s)[0] in transports]
    parts = set(a.parts.split(","))
    # Servers per transport: as many as its largest system (2 at least: the slow case).
    nserv = {t: max([n for s in systems for tt, n in [parse_system(s)] if tt == t] + [2])
             for t in transports}

    started = datetime.datetime.now()
    tar_path, tar_files = bench.prepare_tarball(a.tarball, a.tmp)
    if "sshfs" in transports:
        a.keys = os.path.join(a.tmp, "keys")
        os.makedirs(a.keys)
        sh(f". {bench.ROOT}/tests/support/sshd.sh && sshd_keys {a.keys} chironfs-bench-net",
           shell=True)
    if "nfs" in transports:
        plugins = [d for d in glob.glob("/usr/lib*/*/ganesha") + glob.glob("/usr/lib*/ganesha")
                   if os.path.exists(os.path.join(d, "libfsalvfs.so"))]
        if not plugins or not a.fuse_nfs:
            raise SystemExit("NFS: ganesha's FSAL VFS (nfs-ganesha-vfs) or fuse-nfs missing")
        a.ganesha_plugins = plugins[0]
    runner = Runner(a, tar_path, tar_files)
    servers, live, rpcbind = {}, [], None
    raw = {"started": started.isoformat(timespec="seconds"), "machine": bench.machine_info(),
           "settings": {k: getattr(a, k) for k in ["quick", "repeat", "rand_time", "seq_mib",
                                                   "meta_files", "lat_ops", "count_reps"]},
           "delays": delays, "transports": transports, "systems": systems, "cipher": CIPHER}
    if "nfs" in transports:
        raw["nfs"] = dict(tool_versions(), fuse_nfs_opts=" ".join(FUSE_NFS_OPTS))
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
            if sysm.chironfs:
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
        if "nfs" in transports:
            rpcbind = Rpcbind(a.tmp)
        kinds = {"sshfs": SshServer, "nfs": NfsServer}
        for t in transports:
            servers[t] = []
            for i in range(1, nserv[t] + 1):
                servers[t].append(kinds[t](i, a))
        every = [s for t in transports for s in servers[t]]
        raw["table"] = {}
        if "table" in parts:
            for dl in delays:
                for s in every:
                    s.set_delay(dl, dl)
                res = {s: {} for s in systems}
                for rnd in range(a.repeat):
                    log(f"== delay {dl} ms each way, round {rnd + 1}/{a.repeat}")
                    for s in systems:
                        t, n = parse_system(s)
                        run_sys(s, servers[t][:n],
                                lambda m, s=s: runner.session(m, res[s], errors))
                raw["table"][str(dl)] = res
        if "slow" in parts:
            raw["slow"] = {}
            for t in transports:
                slow, fast = servers[t][0], servers[t][1]
                log(f"== {t} slow replica: server 1 at {a.slow} ms, server 2 at {a.fast} ms "
                    "each way")
                slow.set_delay(a.slow, a.slow)
                fast.set_delay(a.fast, a.fast)
                two = system_name(t, 2)
                lat = {}
                cases = [(f"{t}-fast", [fast], ()), (f"{t}-slow", [slow], ()),
                         (two, [slow, fast], ()), (f"{two}-lowslow", [slow, fast], (1,))]
                for rnd in range(a.repeat):
                    for name, srvs, low in cases:
                        lat.setdefault(name, {})
                        run_sys(name, srvs,
                                lambda m, name=name: runner.latencies(m, lat[name], errors), low)
                raw["slow"][t] = lat
        if "count" in parts and "sshfs" in transports:
            log("== round trips per operation (sshfs_debug)")
            for s in servers["sshfs"]:
                s.set_delay(0, 0)
            cnt = {}
            for name in ("sshfs-1", "chironfs-2"):
                n = 1 if name == "sshfs-1" else 2
                cnt[name] = run_sys(name, servers["sshfs"][:n], runner.count, debug=True)
            raw["count"] = cnt
    finally:
        for sysm in reversed(live):
            sysm.unmount()
        for s in [s for t in servers.values() for s in t]:
            s.stop()
        if rpcbind:
            rpcbind.stop()

    finished = datetime.datetime.now()
    mins = (finished - started).total_seconds() / 60
    md = [f"## chironfs network benchmark, {started:%Y-%m-%d %H:%M}" +
          (" (--quick)" if a.quick else ""), "",
          f"Machine: {raw['machine']}.",
          f"Median of {a.repeat} interleaved round(s); seq file {a.seq_mib} MiB, random I/O "
          f"{a.rand_time} s, metadata {a.meta_files} files of 4 KiB, tree "
          f"{os.path.basename(a.tarball)} ({tar_files} files; cat after drop_caches). Run took "
          f"{mins:.1f} min. Every server on 127.0.0.1 (a private network namespace), behind "
          "tools/netdelay, its data on a tmpfs."]
    if "sshfs" in transports:
        md.append(f"- SSHFS: sshd (internal-sftp); every SSHFS mount: sshfs 3.7, "
                  f"`Ciphers={CIPHER},Compression=no`, defaults otherwise.")
    if "nfs" in transports:
        v = raw["nfs"]
        md.append(
            f"- NFS: NFS-Ganesha {v['ganesha']} (FSAL VFS, NFSv3 over TCP, AUTH_SYS, "
            "no_root_squash, NLM off; its MDCACHE as by default), mounted with fuse-nfs "
            f"(tools/fuse-nfs, upstream 331e6fe) over libnfs {v['libnfs']} and libfuse "
            f"{v['libfuse']}, `fuse-nfs {v['fuse_nfs_opts']}`, defaults otherwise: one libnfs "
            "context, so one NFS request in flight per mount; FUSE writes of 32 KiB at most; "
            "kernel attribute and name caches 1 s, page cache dropped at every open; no libnfs "
            "readahead or page cache, libnfs directory cache on. Not the kernel's NFS client "
            "(this kernel has none): ratios are against the same client.")
    md += ["Cells: `value (ratio to T-1, one mount of the same kind of server)`; CPU/MB = CPU "
           "time of chironfs + the FUSE clients + the servers + proxies per MB moved.", ""]
    for dl, res in raw.get("table", {}).items():
        med = {s: {k: statistics.median(v) for k, v in r.items() if v} for s, r in res.items()}
        for t in transports:
            cols = [s for s in systems if parse_system(s)[0] == t]
            if not cols:
                continue
            md.append(f"### {t.upper()}, {dl} ms each way ({float(dl) * 2:g} ms round trip)\n")
            md.append(table(cols, med, system_name(t, 1)))
            if a.repeat > 1:
                noise = [f"{s} {k}{spread(v)}" for s, r in res.items() if s in cols
                         for k, v in r.items() if not k.endswith("_cpu") and spread(v)]
                md.append("\nSpread (half-range/median) of the rounds: " + ", ".join(noise))
            md.append("")
    for t, lat in raw.get("slow", {}).items():
        two = system_name(t, 2)
        md.append(f"### {t.upper()}, slow replica: server 1 at {a.slow} ms, server 2 at "
                  f"{a.fast} ms each way\n\nMedian latency per operation, ms ({two}: `slow=fast`"
                  " in that order; lowslow: `:slow=fast`, the slow one low-priority):\n")
        md.append("| op | " + " | ".join(lat) + " |")
        md.append("|---|" + "---:|" * len(lat))
        for k, label in (("lat_read", "read 4 KiB (cold)"), ("lat_write", "write 4 KiB + fsync"),
                         ("lat_create", "create + close")):
            md.append(f"| {label} | " + " | ".join(
                fmt(statistics.median(v[k])) if v.get(k) else "-"
                for v in lat.values()) + " |")
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
    if "count" in parts and "nfs" in transports:
        md.append("NFS requests per operation are not counted (no countable request log in "
                  "ganesha or libnfs without a debug build).\n")
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
