#!/usr/bin/env python3
"""Side-by-side benchmark driver for chironfs. Run it through bench/run.sh, which installs
fio/bindfs/mergerfs, builds chironfs, mounts the tmpfs and calls this script.

For every system (the native directory, chironfs with 2 and 3 replicas, bindfs, mergerfs) it
mounts the system over fresh directories of the same backing storage, runs every workload,
reads the daemon's peak RSS (VmHWM) and unmounts. Rounds are interleaved (round 1 of every
system, then round 2, ...) so that a burst of background load hits all systems alike, and
each figure is the median of the rounds. Results: bench/results/.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

ALL_SYSTEMS = ["native", "chironfs-2", "chironfs-3", "bindfs", "mergerfs", "mergerfs-partial"]
# On request only (--only): chironfs with 2 replicas kept on /dev/fuse (--io-uring off), to
# show what FUSE over io_uring changes when the run switches it on (run.sh --io-uring).
EXTRA_SYSTEMS = ["chironfs-2-devfuse"]
GROUPS = ["seq", "rand", "meta", "tree", "lookup"]

# (key, label, unit, group)
WORKLOADS = [
    ("seqwrite", "seq write 1M +fsync", "MB/s", "seq"),
    ("seqread_cold", "seq read cold", "MB/s", "seq"),
    ("seqread_warm", "seq read warm", "MB/s", "seq"),
    ("randread_1", "rand read 4k 1 job", "IOPS", "rand"),
    ("randread_4", "rand read 4k 4 jobs", "IOPS", "rand"),
    ("randwrite_1", "rand write 4k 1 job", "IOPS", "rand"),
    ("randwrite_4", "rand write 4k 4 jobs", "IOPS", "rand"),
    ("create", "create 4k files", "files/s", "meta"),
    ("stat", "stat files", "files/s", "meta"),
    ("delete", "delete files", "files/s", "meta"),
    ("delete_big", "delete 1M files, until freed", "files/s", "meta"),
    ("untar", "untar crate", "files/s", "tree"),
    ("cat", "cat every file", "files/s", "tree"),
]

MOUNT_OPTS = {
    "bindfs": [],
    # mergerfs's documented "you don't need mmap" setup (the fastest safe one), and its
    # "you need mmap" one. minfreespace=0: one branch, no policy choice to make.
    "mergerfs": ["allow_other", "use_ino", "cache.files=off", "dropcacheonclose=true",
                 "category.create=mfs", "minfreespace=0"],
    "mergerfs-partial": ["allow_other", "use_ino", "cache.files=partial",
                         "dropcacheonclose=true", "category.create=mfs", "minfreespace=0"],
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd, timeout=None, check=True, capture=False, shell=False):
    """Runs CMD in its own process group; on timeout or interrupt the whole group (fio's job
    processes, find's cat) is killed, not only its leader."""
    pipe = subprocess.PIPE if capture else None
    with subprocess.Popen(cmd, shell=shell, stdout=pipe, stderr=pipe, text=True,
                          start_new_session=True) as p:
        def kill():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Without pipes, communicate(timeout=) polls with sleeps of up to 50 ms, which rounds
        # a short command (an untar of 0.03 s) up to the next 50 ms: block in waitpid
        # instead, and let a timer kill the group at the deadline.
        timer = None
        if timeout is not None and not capture:
            timer = threading.Timer(timeout, kill)
            timer.start()
        try:
            if timer is None:
                out, err = p.communicate(timeout=timeout)
            else:
                p.wait()
                out = err = None
                if not timer.is_alive() and p.returncode == -signal.SIGKILL:
                    raise subprocess.TimeoutExpired(cmd, timeout)
        except BaseException:
            kill()
            p.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
    if check and p.returncode != 0:
        raise RuntimeError(f"{cmd if shell else ' '.join(cmd)} exited {p.returncode}: "
                           f"{(err or '')[-300:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4] == path:
                return True
    return False


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # KiB
    except OSError:
        pass
    return None


def find_daemon(name, mnt):
    """Pid of the process called NAME whose command line holds MNT (our unique mount point)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).decode(errors="replace") == name \
                and mnt.encode() in argv:
            return int(d)
    return None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class System:
    """One mounted system over fresh directories under BASE."""

    def __init__(self, name, base, mnt, chironfs_bin, notes):
        self.name, self.base, self.mnt = name, base, mnt
        self.bin = chironfs_bin
        self.notes = notes
        self.pid = None
        self.replicas = []
        self.workdir = None
        self.status_file = os.path.join(base, "status")
        self.log_file = os.path.join(base, "daemon.log")

    def mount(self):
        os.makedirs(self.base)
        name = self.name
        if name == "native":
            self.workdir = os.path.join(self.base, "r1")
            os.makedirs(self.workdir)
            return
        os.makedirs(self.mnt, exist_ok=True)
        if name.startswith("chironfs-"):
            n = int(name.split("-")[1])
            self.replicas = [os.path.join(self.base, f"r{i}") for i in range(1, n + 1)]
            for r in self.replicas:
                os.makedirs(r)
            cmd = [self.bin, "-o", "allow_other", "--status-file", self.status_file,
                   "-c", os.path.join(self.base, "ctl.sock"), "-l", self.log_file,
                   "=".join(self.replicas), self.mnt]
            if name.endswith("-devfuse"):
                cmd[1:1] = ["--io-uring", "off"]
            proc = "chironfs"
        else:
            src = os.path.join(self.base, "r1")
            os.makedirs(src)
            self.replicas = [src]
            if name == "bindfs":
                cmd = ["bindfs"] + (["-o", ",".join(MOUNT_OPTS[name])] if MOUNT_OPTS[name]
                                    else []) + [src, self.mnt]
                proc = "bindfs"
            else:
                cmd = ["mergerfs", "-o", ",".join(MOUNT_OPTS[name]), src, self.mnt]
                proc = "mergerfs"
        with open(os.path.join(self.base, "mount.out"), "w") as out:
            r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: "
                               f"{open(os.path.join(self.base, 'mount.out')).read()[-500:]}")
        for _ in range(100):
            if mounted(self.mnt):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{name}: {self.mnt} not mounted after 10 s")
        self.pid = find_daemon(proc, self.mnt)
        if self.pid is None:
            self.notes.append(f"{name}: daemon pid not found, no RSS figure")
        self.workdir = os.path.join(self.mnt, "w")
        os.mkdir(self.workdir)

    def rss(self, key):
        return proc_status(self.pid, key) if self.pid else None

    def chiron_state(self):
        """Overall state from the status file, or None when not chironfs."""
        if not self.name.startswith("chironfs-"):
            return None
        try:
            with open(self.status_file) as f:
                kv = dict(l.rstrip("\n").split("=", 1) for l in f if "=" in l)
        except OSError as e:
            return f"status file unreadable: {e}"
        bad = [f"replica {k.split('.')[1]} {v}" for k, v in kv.items()
               if k.endswith(".state") and k.startswith("replica.") and v != "in-service"]
        return kv.get("state", "?") + ("" if not bad else " (" + ", ".join(bad) + ")")

    def unmount(self):
        if self.name == "native" or not os.path.isdir(self.mnt):
            return
        t0 = time.time()
        for i in range(20):
            if not mounted(self.mnt):
                break
            r = subprocess.run(["umount", self.mnt], capture_output=True, text=True)
            if r.returncode == 0:
                break
            time.sleep(0.5)
        else:
            self.notes.append(f"{self.name}: umount failed, lazy unmount used")
            abort_fuse(self.mnt)
            subprocess.run(["umount", "-l", self.mnt], capture_output=True)
        t_umount = time.time()
        if self.pid:
            for _ in range(100):
                if not pid_alive(self.pid):
                    break
                time.sleep(0.1)
            else:
                state = thread_states(self.pid)
                self.notes.append(f"{self.name}: daemon still alive 10 s after unmount "
                                  f"(state {state}); sent SIGTERM")
                try:
                    os.kill(self.pid, signal.SIGTERM)
                    time.sleep(2)
                    if pid_alive(self.pid):
                        os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        log(f"  {self.name:17} unmounted in {t_umount - t0:.1f} s, daemon gone "
            f"{time.time() - t_umount:.1f} s later")


def thread_states(pid):
    """'comm:state:wchan xN' for each kind of thread of PID, to tell where a daemon waits."""
    seen = {}
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/stat") as f:
                    st = f.read()
                with open(f"/proc/{pid}/task/{t}/wchan") as f:
                    wchan = f.read().strip()
            except OSError:
                continue
            comm = st[st.find("(") + 1:st.rfind(")")]
            k = f"{comm}:{st.rsplit(')', 1)[1].split()[0]}:{wchan}"
            seen[k] = seen.get(k, 0) + 1
    except OSError:
        return "?"
    return ", ".join(f"{k} x{n}" for k, n in sorted(seen.items()))


def abort_fuse(mnt):
    """Aborts the FUSE connection of MNT (unblocks processes stuck on a hung daemon)."""
    try:
        st = os.stat(mnt)
    except OSError:
        return
    p = f"/sys/fs/fuse/connections/{os.minor(st.st_dev)}/abort"
    try:
        with open(p, "w") as f:
            f.write("1")
    except OSError:
        pass


def fio(args, timeout):
    cmd = ["fio", "--output-format=json", "--ioengine=psync", "--fallocate=none",
           "--group_reporting=1"] + args
    r = sh(cmd, timeout=timeout, check=False, capture=True)
    out = r.stdout
    # fio may print warnings before the JSON document.
    start = out.find("{")
    if r.returncode != 0 or start < 0:
        raise RuntimeError(f"fio exit {r.returncode}: {(r.stderr or out)[-400:]}")
    data = json.loads(out[start:])
    job = data["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"fio job error {job['error']}")
    return job


class Runner:
    def __init__(self, a, tar_path, tar_files):
        self.a = a
        self.tar_path, self.tar_files = tar_path, tar_files
        self.can_drop = drop_caches()

    def run_session(self, sysm, rnd, results, errors):
        """All workloads of one round on one mounted system; records into RESULTS[key]."""
        a = self.a
        w = sysm.workdir
        f = os.path.join(w, "seq.dat")
        size = f"{a.seq_mib}M"
        nbytes = a.seq_mib << 20

        def record(key, fn):
            t0 = time.time()
            try:
                v = fn()
                results.setdefault(key, []).append(v)
                log(f"  {sysm.name:17} {key:13} {v:14,.1f}   ({time.time() - t0:.1f} s)")
            except subprocess.TimeoutExpired:
                errors.append(f"{sysm.name} round {rnd} {key}: HUNG (timeout)")
                log(f"  {sysm.name:17} {key:13} HUNG")
                abort_fuse(sysm.mnt)
            except Exception as e:  # noqa: BLE001 - reported in the table notes
                errors.append(f"{sysm.name} round {rnd} {key}: {e}")
                log(f"  {sysm.name:17} {key:13} ERROR {e}")

        g = set(a.workloads)
        slow = max(120, a.seq_mib // 4)  # generous: 4 MB/s floor
        if "seq" in g or "rand" in g:
            def seqwrite():
                if os.path.exists(f):
                    os.unlink(f)
                job = fio([f"--name=seqwrite", f"--filename={f}", "--rw=write", "--bs=1M",
                           f"--size={size}", "--end_fsync=1", "--invalidate=0"], slow)
                return job["write"]["bw_bytes"] / 1e6
            record("seqwrite", seqwrite)
            if not os.path.exists(f) or os.path.getsize(f) != nbytes:
                # later workloads need the file: lay it out directly if fio failed
                errors.append(f"{sysm.name} round {rnd}: seq.dat missing after seqwrite")
                return
        if "seq" in g:
            if self.can_drop:
                def seqread_cold():
                    drop_caches()
                    job = fio(["--name=seqread", f"--filename={f}", "--rw=read", "--bs=1M",
                               f"--size={size}", "--invalidate=1"], slow)
                    return job["read"]["bw_bytes"] / 1e6
                # One cold read of 1 GiB from tmpfs lasts about 0.2 s: a single sample moves
                # by 30% (native too), so every round takes several.
                for _ in range(a.passes):
                    record("seqread_cold", seqread_cold)
            # warm: one pass to fill whatever cache the system has, then loop for read_time
            sh(f"cat '{f}' > /dev/null", shell=True, timeout=slow)

            def seqread_warm():
                job = fio(["--name=seqread", f"--filename={f}", "--rw=read", "--bs=1M",
                           f"--size={size}", "--invalidate=0", "--time_based=1",
                           f"--runtime={a.read_time}"], a.read_time + slow)
                return job["read"]["bw_bytes"] / 1e6
            record("seqread_warm", seqread_warm)
        if "rand" in g and rnd <= a.rand_repeat:
            for rw in ("randread", "randwrite"):
                for jobs in (1, 4):
                    def rand(rw=rw, jobs=jobs):
                        job = fio([f"--name={rw}", f"--filename={f}", f"--rw={rw}", "--bs=4k",
                                   f"--size={size}", f"--numjobs={jobs}", "--invalidate=0",
                                   "--time_based=1", f"--runtime={a.rand_time}",
                                   "--norandommap=1", "--randrepeat=0"],
                                  a.rand_time + slow)
                        return job["read" if rw == "randread" else "write"]["iops"]
                    record(f"{rw}_{jobs}", rand)
        # seq.dat stays until the end of the session: the replica comparison after unmount
        # covers the concurrent random writes too.
        if "meta" in g:
            # Several passes per round, each over fresh names after the previous one's
            # entries expired (1 s): small-file rates move by 10-20% from one pass to the next.
            for n in range(a.passes):
                phases = {}

                def meta_create(n=n):
                    if n:
                        time.sleep(1.2)
                    phases.update(metadata(os.path.join(w, f"meta{n}"), a.meta_files,
                                           a.timeout))
                    return phases["create"]
                record("create", meta_create)
                if "stat" in phases:
                    record("stat", lambda: phases["stat"])
                    record("delete", lambda: phases["delete"])
            record("delete_big", lambda: delete_big_files(os.path.join(w, "big"), sysm.base,
                                                          a.big_files, a.timeout))
        if "tree" in g:
            dest = os.path.join(w, "tree")
            os.mkdir(dest)

            def untar():
                t0 = time.perf_counter()
                sh(["tar", "-xf", self.tar_path, "-C", dest], timeout=a.timeout)
                return self.tar_files / (time.perf_counter() - t0)
            record("untar", untar)

            def cat():
                t0 = time.perf_counter()
                sh(f"find {dest} -type f -exec cat {{}} + > /dev/null", shell=True,
                   timeout=a.timeout)
                return self.tar_files / (time.perf_counter() - t0)
            record("cat", cat)

    def lookup_rss(self, sysm):
        """Creates N empty files through the mount, finds them, returns the daemon's RSS."""
        n = self.a.lookup_files
        d = os.path.join(sysm.workdir, "lookup")
        os.mkdir(d)
        t0 = time.perf_counter()
        for i in range(n):
            if i % 1000 == 0:
                sub = os.path.join(d, f"d{i // 1000:04d}")
                os.mkdir(sub)
            os.close(os.open(os.path.join(sub, f"f{i:07d}"), os.O_WRONLY | os.O_CREAT, 0o644))
        t1 = time.perf_counter()
        r = sh(["find", d, "-type", "f", "-printf", "%s\n"], capture=True,
               timeout=self.a.timeout)
        found = r.stdout.count("\n")
        t2 = time.perf_counter()
        return {"files": n, "found": found, "create_s": t1 - t0, "find_s": t2 - t1,
                "rss_kib": sysm.rss("VmRSS"), "hwm_kib": sysm.rss("VmHWM")}


def metadata(root, n, timeout):
    """create/stat/delete of N 4 KiB files in a tree of 100 files per directory; rates."""
    data = b"\x5a" * 4096
    per_dir = 100
    dirs = [os.path.join(root, f"d{i:03d}") for i in range((n + per_dir - 1) // per_dir)]
    paths = [os.path.join(dirs[i // per_dir], f"f{i:05d}") for i in range(n)]
    os.mkdir(root)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        if i % per_dir == 0:
            os.mkdir(dirs[i // per_dir])
        fd = os.open(p, flags, 0o644)
        if os.write(fd, data) != 4096:
            raise RuntimeError("short write")
        os.close(fd)
    t1 = time.perf_counter()
    size = 0
    for p in paths:
        size += os.stat(p).st_size
    t2 = time.perf_counter()
    if size != 4096 * n:
        raise RuntimeError(f"stat saw {size} bytes, expected {4096 * n}")
    for p in paths:
        os.unlink(p)
    for d in dirs:
        os.rmdir(d)
    t3 = time.perf_counter()
    left = os.listdir(root)
    if left:
        raise RuntimeError(f"{len(left)} entries left after delete")
    os.rmdir(root)
    return {"create": n / (t1 - t0), "stat": n / (t2 - t1), "delete": n / (t3 - t2)}


def delete_big_files(root, backing, n, timeout):
    """Deletes N files of 1 MiB; files/s. The clock runs until BACKING (the storage under the
    system) has the space back: a daemon that frees a file after answering is not credited
    with work it has not done yet."""
    mib = 1 << 20
    data = b"\xa5" * mib
    paths = [os.path.join(root, f"b{i:04d}") for i in range(n)]
    free_before = os.statvfs(backing)
    os.mkdir(root)
    for p in paths:
        with open(p, "wb") as f:
            f.write(data)
    # Slack for what else grows meanwhile (chironfs's journal): 4 MiB.
    want = free_before.f_bfree - 4 * mib // free_before.f_frsize
    t0 = time.perf_counter()
    for p in paths:
        os.unlink(p)
    while os.statvfs(backing).f_bfree < want:
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError("the space of the deleted files did not come back")
        time.sleep(0.0002)
    t1 = time.perf_counter()
    os.rmdir(root)
    return n / (t1 - t0)


def compare_replicas(sysm):
    """diff -r between replicas of a chironfs system: any difference is a bug."""
    if len(sysm.replicas) < 2:
        return None
    diffs = []
    for r in sysm.replicas[1:]:
        # .chironfs/ holds each replica's own identity and state: it differs by design.
        p = subprocess.run(["diff", "-rq", "-x", ".chironfs", sysm.replicas[0], r],
                           capture_output=True,
                           text=True, timeout=600)
        if p.returncode != 0:
            diffs.append((p.stdout + p.stderr).strip()[:500])
    return diffs


def fmt_val(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def fmt_ratio(v, base):
    if v is None or not base:
        return ""
    r = v / base
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def build_table(storage_label, systems, med, rss, lookup):
    """Markdown table: rows = workloads, columns = systems; cells 'value (ratio to native)'."""
    lines = []
    hdr = ["workload", "unit"] + systems
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * len(systems)) + "|")
    for key, label, unit, _g in WORKLOADS:
        row = [med.get(s, {}).get(key) for s in systems]
        if all(v is None for v in row):
            continue
        base = med.get("native", {}).get(key)
        cells = []
        for s, v in zip(systems, row):
            if v is None:
                cells.append("-")
            elif s == "native":
                cells.append(fmt_val(v))
            else:
                cells.append(f"{fmt_val(v)} ({fmt_ratio(v, base)})")
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    cells = []
    for s in systems:
        v = rss.get(s)
        cells.append("-" if v is None else f"{v / 1024:.1f}")
    lines.append("| daemon peak RSS (VmHWM) | MiB | " + " | ".join(cells) + " |")
    if lookup:
        cells = []
        for s in systems:
            l = lookup.get(s)
            cells.append("-" if not l or l.get("rss_kib") is None
                         else f"{l['rss_kib'] / 1024:.1f}")
        n = next(iter(lookup.values()))["files"]
        lines.append(f"| RSS after {n:,} lookups (VmRSS) | MiB | " + " | ".join(cells) + " |")
    return f"### Storage: {storage_label}\n\n" + "\n".join(lines) + "\n"


def shown_ratio(r, want):
    """R with two decimals; a miss is rounded down, so that 0.8999 never reads as 0.90."""
    return f"{r:.2f}" if r >= want else f"{math.floor(r * 100) / 100:.2f}"


def targets(med, lookup, rss_limit_kib=64 * 1024):
    """Issue 6 targets for chironfs with 2 replicas; lines of 'met/NOT met'."""
    c, n, m = med.get("chironfs-2", {}), med.get("native", {}), med.get("mergerfs", {})
    out = []

    def line(name, ok, detail):
        if ok is None:
            out.append(f"- {name}: not measured ({detail})")
        else:
            out.append(f"- {name}: {'met' if ok else 'NOT met'} ({detail})")

    def ratio_target(name, key, want):
        if c.get(key) is None or not n.get(key):
            return line(name, None, "no figure")
        r = c[key] / n[key]
        line(name, r >= want, f"{shown_ratio(r, want)}x native, target {want}x")

    ratio_target("sequential read (warm) >= 0.9x native", "seqread_warm", 0.9)
    if c.get("seqread_cold") is not None:
        ratio_target("sequential read (cold) >= 0.9x native", "seqread_cold", 0.9)
    ratio_target("sequential write >= 0.25x native", "seqwrite", 0.25)
    for key, name in [("randread_4", "random read 4 jobs"), ("randwrite_4", "random write 4 jobs"),
                      ("create", "create"), ("stat", "stat"), ("delete", "delete")]:
        if c.get(key) is None or m.get(key) is None:
            line(f"{name} >= mergerfs", None, "no figure")
        else:
            r = c[key] / m[key]
            line(f"{name} >= mergerfs", r >= 1,
                 f"{fmt_val(c[key])} vs {fmt_val(m[key])}, {shown_ratio(r, 1)}x")
    l = lookup.get("chironfs-2")
    if l and l.get("rss_kib") is not None:
        line(f"RSS <= 64 MiB after {l['files']:,} lookups", l["rss_kib"] <= rss_limit_kib,
             f"{l['rss_kib'] / 1024:.1f} MiB")
    else:
        line("RSS <= 64 MiB after lookups", None, "no figure")
    return out


def machine_info():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for l in f:
                if l.startswith("model name"):
                    cpu = l.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = proc_meminfo_gib()
    load = os.getloadavg()
    try:
        with open("/sys/module/fuse/parameters/enable_uring") as f:
            uring = "on" if f.read().strip() in ("Y", "1") else "off"
    except OSError:
        uring = "not in this kernel"
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, "
            f"kernel {platform.release()} (FUSE over io_uring {uring}); load average at start "
            f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


def proc_meminfo_gib():
    with open("/proc/meminfo") as f:
        for l in f:
            if l.startswith("MemTotal:"):
                return int(l.split()[1]) / 1024 / 1024
    return 0


def tool_versions():
    def first(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "?"
    return {"fio": first(["fio", "--version"]), "bindfs": first(["bindfs", "--version"]),
            "mergerfs": first(["mergerfs", "--version"])}


def prepare_tarball(path, tmp):
    """Decompresses the crate (gzip tarball) once, outside the measured filesystems, so that
    the untar measures file creation and not gunzip. Returns (tar path, regular file count)."""
    out = os.path.join(tmp, "source.tar")
    sh(f"gzip -dc '{path}' > '{out}'", shell=True)
    with tarfile.open(out) as t:
        files = sum(1 for m in t.getmembers() if m.isfile())
    return out, files


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tmp", required=True, help="unique temp dir (made by run.sh)")
    p.add_argument("--storage", action="append", required=True,
                   help="LABEL=DIR backing storage (repeatable)")
    p.add_argument("--chironfs", required=True)
    p.add_argument("--tarball", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int)
    p.add_argument("--rand-repeat", type=int)
    p.add_argument("--rand-time", type=int)
    p.add_argument("--passes", type=int)
    p.add_argument("--only", default="")
    p.add_argument("--workloads", default=",".join(GROUPS))
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    a = p.parse_args()

    if a.quick:
        defaults = dict(seq_mib=128, read_time=1, rand_time=3, meta_files=1000, big_files=50,
                        lookup_files=10000, repeat=1, rand_repeat=1, passes=1, timeout=300)
    else:
        defaults = dict(seq_mib=1024, read_time=3, rand_time=20, meta_files=10000,
                        big_files=200, lookup_files=100000, repeat=3, rand_repeat=1, passes=3,
                        timeout=900)
    for k, v in defaults.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    a.rand_repeat = min(a.rand_repeat, a.repeat)
    a.workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    bad = [w for w in a.workloads if w not in GROUPS]
    if bad:
        sys.exit(f"unknown workload group(s) {bad}; choose from {GROUPS}")
    systems = ALL_SYSTEMS if not a.only else [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in systems if s not in ALL_SYSTEMS + EXTRA_SYSTEMS]
    if bad:
        sys.exit(f"unknown system(s) {bad}; choose from {ALL_SYSTEMS + EXTRA_SYSTEMS}")
    if "native" not in systems:
        systems = ["native"] + systems  # ratios need it
    systems = [s for s in ALL_SYSTEMS + EXTRA_SYSTEMS if s in systems]

    started = datetime.datetime.now()
    tar_path, tar_files = prepare_tarball(a.tarball, a.tmp)
    runner = Runner(a, tar_path, tar_files)
    notes = []
    if not runner.can_drop:
        notes.append("drop_caches not writable here: no cold-read figures")
    log(f"systems {systems}; workloads {a.workloads}; repeat {a.repeat} x {a.passes} passes "
        f"(random: {a.rand_repeat} x {a.rand_time} s); seq file {a.seq_mib} MiB; "
        f"tarball {os.path.basename(a.tarball)} ({tar_files} files)")

    storages = [s.split("=", 1) for s in a.storage]
    raw = {"started": started.isoformat(timespec="seconds"), "machine": machine_info(),
           "tools": tool_versions(), "settings": {k: getattr(a, k) for k in
                                                 ["quick", "repeat", "passes", "rand_repeat",
                                                  "rand_time", "seq_mib", "read_time", "meta_files",
                                                  "lookup_files", "workloads"]},
           "systems": systems, "tarball": os.path.basename(a.tarball), "storage": {}}
    mnt_root = os.path.join(a.tmp, "mnt")
    os.makedirs(mnt_root, exist_ok=True)
    live = []

    def cleanup_all():
        for s in reversed(live):
            try:
                s.unmount()
            except Exception as e:  # noqa: BLE001
                log(f"cleanup {s.name}: {e}")
        live.clear()

    def handle_term(_sig, _frm):
        # Unwind: subprocess.run kills the running fio/tar, then `finally` unmounts.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("interrupted: unmounting")
        raise SystemExit(130)
    signal.signal(signal.SIGTERM, handle_term)
    signal.signal(signal.SIGINT, handle_term)

    try:
        for label, sdir in storages:
            results = {s: {} for s in systems}
            hwm = {}
            lookup = {}
            errors = []
            consistency = []
            for rnd in range(1, a.repeat + 1):
                log(f"== storage {label}, round {rnd}/{a.repeat}")
                for s in systems:
                    base = os.path.join(sdir, f"{s}-{rnd}")
                    sysm = System(s, base, os.path.join(mnt_root, s), a.chironfs, notes)
                    live.append(sysm)
                    try:
                        sysm.mount()
                        runner.run_session(sysm, rnd, results[s], errors)
                        v = sysm.rss("VmHWM")
                        if v is not None:
                            hwm[s] = max(hwm.get(s, 0), v)
                        st = sysm.chiron_state()
                        if st is not None and not st.startswith("ok"):
                            errors.append(f"{s} round {rnd}: status file says {st}")
                    except Exception as e:  # noqa: BLE001
                        errors.append(f"{s} round {rnd}: {e}")
                        log(f"  {s}: {e}")
                    finally:
                        sysm.unmount()
                        live.remove(sysm)
                    d = compare_replicas(sysm) if s.startswith("chironfs") else None
                    if d:
                        consistency.append(f"{s} round {rnd}: replicas differ: {d}")
                    if os.path.exists(os.path.join(base, "daemon.log")):
                        with open(os.path.join(base, "daemon.log"), errors="replace") as f:
                            tail = [l.strip() for l in f if l.strip()]
                        if tail:
                            raw.setdefault("daemon_logs", {})[f"{label}/{s}-{rnd}"] = tail[-50:]
                        for l in tail:
                            if any(w in l for w in ("WARNING", "ERROR", "ALERT", "CRIT")):
                                # drop the timestamp and pid, shorten our temp paths
                                msg = l.split(": ", 1)[-1].replace(a.tmp, "$TMP")
                                msg = re.sub(r"\b[0-9a-f]{16}\b", "<id>", msg)
                                notes.append(f"{s} daemon log: {msg}")
                    if not mounted(sysm.mnt):
                        shutil.rmtree(base, ignore_errors=True)
                    else:
                        errors.append(f"{s}: still mounted, {base} kept")
            if "lookup" in a.workloads:
                for s in systems:
                    if not s.startswith("chironfs"):
                        continue
                    log(f"== storage {label}: {s} RSS after {a.lookup_files:,} lookups")
                    base = os.path.join(sdir, f"{s}-lookup")
                    sysm = System(s, base, os.path.join(mnt_root, s), a.chironfs, notes)
                    live.append(sysm)
                    try:
                        sysm.mount()
                        lookup[s] = runner.lookup_rss(sysm)
                        if lookup[s]["found"] != a.lookup_files:
                            errors.append(f"{s}: find saw {lookup[s]['found']} of "
                                          f"{a.lookup_files} files")
                        log(f"  {s}: {lookup[s]}")
                    except Exception as e:  # noqa: BLE001
                        errors.append(f"{s} lookup: {e}")
                        log(f"  {s} lookup: {e}")
                    finally:
                        sysm.unmount()
                        live.remove(sysm)
                    if not mounted(sysm.mnt):
                        shutil.rmtree(base, ignore_errors=True)
            med = {s: {k: statistics.median(v) for k, v in results[s].items() if v}
                   for s in systems}
            raw["storage"][label] = {"samples": results, "median": med, "hwm_kib": hwm,
                                     "lookup": lookup, "errors": errors,
                                     "consistency": consistency}
    finally:
        cleanup_all()

    finished = datetime.datetime.now()
    raw["finished"] = finished.isoformat(timespec="seconds")
    raw["notes"] = notes
    mins = (finished - started).total_seconds() / 60
    md = [f"## chironfs benchmark, {started:%Y-%m-%d %H:%M}"
          + (" (--quick)" if a.quick else ""), "",
          f"Machine: {raw['machine']}.",
          f"Tools: {raw['tools']['fio']}, {raw['tools']['bindfs']}, "
          f"{raw['tools']['mergerfs']}.",
          f"Settings: median of {a.repeat} interleaved rounds, {a.passes} passes each for the "
          f"cold read and the metadata run (random I/O: "
          f"{a.rand_repeat} round(s) of {a.rand_time} s); sequential file {a.seq_mib} MiB "
          f"(1 MiB blocks; write ends with fsync; warm read loops {a.read_time} s); "
          f"metadata {a.meta_files:,} files of 4 KiB, 100 per directory; tree: "
          f"{raw['tarball']} ({tar_files} files, untar from an uncompressed copy, then cat "
          f"of every file). Run took {mins:.1f} min.",
          "MB/s = 10^6 bytes/s; cells are `value (ratio to native in the same run)`. "
          "mergerfs: `" + ",".join(MOUNT_OPTS["mergerfs"]) + "`; mergerfs-partial: "
          "`cache.files=partial`; bindfs: defaults (single-threaded); chironfs: defaults.", ""]
    for label, _ in storages:
        st = raw["storage"][label]
        md.append(build_table(label, systems, st["median"], st["hwm_kib"], st["lookup"]))
        if "chironfs-2" in systems:
            md.append(f"Issue 6 targets (chironfs, 2 replicas, {label}):\n")
            md.extend(targets(st["median"], st["lookup"]))
            md.append("")
        for s, l in st["lookup"].items():
            md.append(f"- {s} lookup run: {l['files']:,} empty files created in "
                      f"{l['create_s']:.1f} s, found in {l['find_s']:.1f} s; VmRSS "
                      f"{(l['rss_kib'] or 0) / 1024:.1f} MiB, VmHWM {(l['hwm_kib'] or 0) / 1024:.1f} MiB")
        probs = st["errors"] + st["consistency"]
        if probs:
            md.append("")
            md.append(f"Problems seen ({label}):\n")
            md.extend(f"- {e}" for e in probs)
        md.append("")
    if notes:
        md.append("Notes:\n")
        md.extend(f"- {n}" for n in dict.fromkeys(notes))
    text = "\n".join(md).rstrip() + "\n"

    os.makedirs(os.path.join(a.results, "raw"), exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(a.results, "raw", f"{stamp}.json"), "w") as f:
        json.dump(raw, f, indent=1, default=str)
    with open(os.path.join(a.results, f"{stamp}.md"), "w") as f:
        f.write(text)
    if not a.quick:
        with open(os.path.join(a.results, "latest.md"), "w") as f:
            f.write(text)
    else:
        with open(os.path.join(a.results, "latest-quick.md"), "w") as f:
            f.write(text)
    print(text)
    log(f"saved bench/results/{stamp}.md and bench/results/raw/{stamp}.json")
    bad = any(raw["storage"][l]["errors"] or raw["storage"][l]["consistency"]
              for l, _ in storages)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
