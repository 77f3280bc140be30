//! Start-up and shutdown of the chironfs daemon: daemonize (returning only once the mount
//! answers), open the replicas, mount, keep the status file, control socket and health checks
//! running, and unmount cleanly on SIGTERM/SIGINT.

pub mod logging;
pub mod members;
pub mod metrics_http;
pub mod mount_watch;
pub mod status_writer;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fuser::{MountOption, SessionACL};

use crate::config::{Config, Unchecked};
use crate::control::server::{ControlServer, spawn_server};
use crate::engine::lease::LeaseKeeper;
use crate::engine::set::ReplicaSet;
use crate::fuse::{ChironFs, Gauges, KernelIo};
use crate::rules::lease::Timing;
use crate::sys;
use crate::view::snapshot::ControlHandler;
use logging::LogTargets;
use mount_watch::{ConnDev, MountWatch, Next};

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1024 * 1024;

/// Runs the daemon; returns the process exit code. The command line is checked against the
/// filesystem here, in the process that stays (the daemon after the fork): a look at a
/// replica on a dead server may block its thread for good, and only the daemon may keep such
/// a thread (its caller must be able to exit).
pub fn run(unchecked: Unchecked) -> i32 {
    sys::clear_umask();
    sys::raise_nofile_limit();
    sys::tune_malloc();
    let quiet = unchecked.quiet();
    if unchecked.foreground() {
        let config = match unchecked.check() {
            Ok(config) => config,
            Err(e) => {
                if !quiet {
                    eprintln!("{e}");
                }
                return 1;
            }
        };
        return match serve(&config, None) {
            Ok(()) => 0,
            Err(e) => {
                if !config.quiet {
                    eprintln!("chironfs: {e}");
                }
                log::error!("{e}");
                1
            }
        };
    }
    let (read_end, write_end) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("chironfs: cannot create a pipe: {e}");
            return 1;
        }
    };
    // No thread has been started yet: replicas, FUSE and logging start after this.
    match sys::fork_single_threaded() {
        Err(e) => {
            eprintln!("chironfs: cannot fork: {e}");
            1
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(write_end);
            let mut report = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut report);
            match report.strip_prefix("OK") {
                Some(_) => 0,
                None => {
                    let report = report.trim();
                    if !quiet {
                        if report.is_empty() {
                            eprintln!("chironfs: the daemon exited before the mount answered");
                        } else {
                            eprintln!("chironfs: {report}");
                        }
                    }
                    1
                }
            }
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(read_end);
            // Checked before the chdir below: relative paths are the caller's.
            let config = match unchecked.check() {
                Ok(config) => config,
                Err(e) => {
                    let mut p = std::fs::File::from(write_end);
                    let text = e.message();
                    let _ = p.write_all(text.strip_prefix("chironfs: ").unwrap_or(text).as_bytes());
                    return 1;
                }
            };
            let _ = nix::unistd::setsid();
            let _ = std::env::set_current_dir("/");
            detach_stdio();
            let parent = Arc::new(std::sync::Mutex::new(Some(std::fs::File::from(write_end))));
            match serve(&config, Some(Arc::clone(&parent))) {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("{e}");
                    if let Some(mut p) = parent.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        let _ = p.write_all(e.as_bytes());
                    }
                    1
                }
            }
        }
    }
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        sys::redirect_stdio(std::os::fd::AsFd::as_fd(&null));
    }
}

fn fuse_config(config: &Config) -> fuser::Config {
    let mut fc = fuser::Config::default();
    fc.mount_options = vec![
        MountOption::FSName(config.fsname.clone()),
        // The kernel takes the subtype as a mount option: /proc/mounts then says fuse.chironfs.
        MountOption::CUSTOM("subtype=chironfs".into()),
        MountOption::DefaultPermissions,
    ];
    fc.mount_options
        .extend(config.mount_options.iter().cloned());
    // Reads never move access times (sys::open_beneath): the mount says so.
    if !fc.mount_options.contains(&MountOption::NoAtime) {
        fc.mount_options.push(MountOption::NoAtime);
    }
    fc.acl = if config.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fc.n_threads = Some(config.threads);
    fc.clone_fd = true;
    fc
}

/// The pipe to the waiting parent (daemon mode); taken when the outcome is reported.
type ParentPipe = Arc<std::sync::Mutex<Option<std::fs::File>>>;

/// Mounts and serves until a signal or an external unmount; `parent` hears "OK" once the mount
/// answers (daemon mode), or the error. The steps, in order: logging, the replica set and its
/// mount-time recovery, the control socket, the status file, the FUSE session, the status and
/// health threads, then waiting for the end and a clean shutdown.
fn serve(config: &Config, parent: Option<ParentPipe>) -> Result<(), String> {
    start_logging(config)?;
    let mut members = members::open(config)?;
    members::add_recorded(config, &mut members)?;
    let set = open_set(config, &members)?;
    // A read-only observer takes no lease: it writes nothing to the replicas.
    let lease = match set.is_observer() {
        true => None,
        false => Some(take_lease(config, &set, &members)?),
    };
    let served = serve_set(config, &set, &members, lease.as_deref(), parent);
    // At a clean end the lease is released after the clean-shutdown records; after a failed
    // start, at once: nothing of ours is being written any more.
    if let Some(lease) = lease {
        lease.release();
    }
    served
}

/// Serves a set whose lease this daemon holds: the mount-time recovery, the control socket,
/// the status file, the FUSE session, the status and health threads, then waiting for the end
/// and a clean shutdown.
fn serve_set(
    config: &Config,
    set: &Arc<ReplicaSet>,
    members: &members::Members,
    lease: Option<&LeaseKeeper>,
    parent: Option<ParentPipe>,
) -> Result<(), String> {
    for (index, why) in members.unreachable.iter().enumerate() {
        match why {
            Some(why) if index < members.replicas => {
                set.unreachable_at_start(index, why.clone());
            }
            _ => {}
        }
    }
    set.recover_at_mount(
        config.force_source.map(usize::from),
        !config.no_new_set,
        config.journal_max,
    )?;
    let mountpoint = config.mountpoint.display().to_string();
    // The control socket first: a second daemon on the same socket is refused before it
    // mounts anything or writes a status file.
    let stop = Arc::new(AtomicBool::new(false));
    let handler: Arc<dyn ControlHandler> = set.clone();
    let control = start_control(config, &handler, &stop)?;
    status_writer::write_now(&config.status_file, handler.as_ref()).map_err(|e| {
        format!(
            "cannot write the status file {}: {e}",
            config.status_file.display()
        )
    })?;
    // Bound before the mount: an address in use fails the start, not a mounted daemon.
    let metrics_listener = config
        .metrics_listen
        .map(|addr| metrics_http::spawn(addr, Arc::clone(&handler), Arc::clone(&stop)))
        .transpose()?;
    // Before the mount: a SIGTERM (or SIGHUP) that comes as soon as the mount shows (a
    // cluster manager's stop right after its start) must unmount, not kill the daemon with
    // the signal's default action and leave a dead mount behind. Seen once in 6 test runs.
    let signals = Signals::install()?;
    let mounted = mount(config, set)?;
    let files = status_writer::Files {
        status: config.status_file.clone(),
        metrics: Some(crate::config::metrics_file_of(&config.status_file)),
    };
    let status_writer =
        status_writer::spawn_writer(files, handler, Duration::from_secs(1), Arc::clone(&stop));
    spawn_health(set, &stop)?;
    log::info!(
        "mounted {} on {mountpoint} ({} replicas, timeout {:.1} s, status {}, control {})",
        config.fsname,
        members.replicas,
        config.timeout.as_secs_f64(),
        config.status_file.display(),
        config.control_socket.display()
    );
    // Report success and close the pipe so the parent returns now.
    if let Some(mut p) = parent.and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).take()) {
        let _ = p.write_all(b"OK");
    }
    let Mounted {
        session_thread,
        mut unmounter,
        ended,
        conn,
    } = mounted;
    signals.wait_for_end(config, &ended, &mut unmounter, &conn);
    if let Some(lease) = lease {
        lease.stopping();
    }
    stop.store(true, Ordering::SeqCst);
    control.shutdown();
    let _ = status_writer.join();
    if let Some(listener) = metrics_listener {
        let _ = listener.join();
    }
    let result = session_thread.join();
    set.write_clean_shutdown();
    log::info!("unmounted {mountpoint}");
    match result {
        Ok(Ok(())) | Ok(Err(_)) => Ok(()),
        Err(_) => Err("the FUSE session panicked".into()),
    }
}

/// Changes the kernel flags of the chironfs mount at `mountpoint` (`-o remount,ro` and back
/// to `rw`, `nosuid`, ...): the kernel then refuses writes itself, the daemon and its replicas
/// go on as they were. Anything else at `mountpoint` is refused.
pub fn remount(mountpoint: &std::path::Path, flags: &[MountOption]) -> Result<(), String> {
    let canonical = std::fs::canonicalize(mountpoint)
        .map_err(|e| format!("cannot remount {}: {e}", mountpoint.display()))?;
    if !sys::is_chironfs_mounted(&canonical.display().to_string()) {
        return Err(format!(
            "cannot remount {}: no chironfs is mounted there (-o remount changes the flags of a \
             running mount; mount it without remount first)",
            mountpoint.display()
        ));
    }
    sys::remount(&canonical, flags)
        .map_err(|e| format!("cannot remount {}: {e}", mountpoint.display()))
}

/// Logs to stderr in the foreground, syslog when daemonized (or when a socket was given),
/// and the log file if any.
fn start_logging(config: &Config) -> Result<(), String> {
    let explicit_syslog = config.syslog_socket != std::path::Path::new("/dev/log");
    logging::init(&LogTargets {
        stderr: config.foreground,
        quiet: config.quiet,
        syslog: (!config.foreground || explicit_syslog).then(|| config.syslog_socket.clone()),
        file: config.log_file.clone(),
        debug: config.debug,
    })
}

/// Builds the set of the opened replicas with the configured quorum and resync policy.
fn open_set(config: &Config, members: &members::Members) -> Result<Arc<ReplicaSet>, String> {
    let replicas = members.all[..members.replicas].to_vec();
    let mountpoint = config.mountpoint.display().to_string();
    let witnesses = members.all.len() - members.replicas;
    // Under auto, a majority of the members actually mounted (recorded ones included).
    let required = match config.quorum_auto {
        true => Some((replicas.len() + witnesses) / 2 + 1),
        false => config.quorum.map(usize::from),
    };
    let quorum = crate::rules::quorum::Quorum::new(
        required,
        config.quorum_auto,
        replicas.len(),
        witnesses,
        mountpoint.clone(),
    );
    let mut set = ReplicaSet::new(replicas, config.timeout, mountpoint).with_quorum(quorum);
    // `-o ro`: a read-only observer, which may run beside the owner (no lease, no writes).
    let observer = config.mount_options.contains(&MountOption::RO);
    if observer {
        set = set.read_only_observer();
    }
    let set = set.shared();
    set.set_resync_rate(config.resync_rate);
    if config.auto_resync && !observer {
        set.enable_auto_resync();
    } else if config.auto_resync {
        log::warn!("--auto-resync is ignored on a read-only observer (-o ro)");
    }
    Ok(set)
}

/// Takes the replica set's ownership lease on its members (the replicas and the witness), or
/// says who holds it, before anything else is read or written; then keeps it renewed.
fn take_lease(
    config: &Config,
    set: &ReplicaSet,
    members: &members::Members,
) -> Result<Arc<LeaseKeeper>, String> {
    for (w, why) in members.all[members.replicas..]
        .iter()
        .zip(&members.unreachable[members.replicas..])
    {
        if let Some(why) = why {
            log::error!(
                "the witness {} does not count for the lease majority: {why}",
                w.path.display()
            );
        }
    }
    let timing = Timing {
        lease: config
            .lease_time
            .unwrap_or_else(|| Timing::default_lease(config.timeout)),
        timeout: config.timeout,
    };
    // One majority rule: with --quorum, the lease too needs a majority of the members.
    let strict = config.strict_majority || config.quorum.is_some();
    if members.all.len() == 2 && !strict {
        log::warn!(
            "the replica set has two members and no witness: it keeps serving on the one that \
             answers, so a storage partition between front servers could still split it (the \
             generations catch it at reunion); --witness DIR on a third machine closes that"
        );
    }
    let replicas = members.replicas;
    let keeper = Arc::new(LeaseKeeper::new(
        members.all.clone(),
        replicas,
        timing,
        strict,
        &config.mountpoint.display().to_string(),
    ));
    keeper.acquire()?;
    keeper
        .start_renewing()
        .map_err(|e| format!("cannot start the lease thread: {e}"))?;
    set.install_lease(Arc::clone(&keeper));
    Ok(keeper)
}

/// Serves the control socket. A daemon that was just unmounted may still hold it for a
/// moment: an immediate remount (an OCF restart) waits for it up to 3 s before giving up.
fn start_control(
    config: &Config,
    handler: &Arc<dyn ControlHandler>,
    stop: &Arc<AtomicBool>,
) -> Result<ControlServer, String> {
    let mut attempts = 0;
    loop {
        match spawn_server(
            &config.control_socket,
            Arc::clone(handler),
            Arc::clone(stop),
        ) {
            Ok(server) => return Ok(server),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 30 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(format!(
                    "cannot serve the control socket {}: {e}",
                    config.control_socket.display()
                ));
            }
        }
    }
}

/// A running FUSE session: its thread, how to unmount it, whether it ended, and its
/// connection.
struct Mounted {
    session_thread: std::thread::JoinHandle<std::io::Result<()>>,
    unmounter: fuser::SessionUnmounter,
    ended: Arc<AtomicBool>,
    conn: Connection,
}

/// What the daemon watches of its FUSE connection: its device and its open handles.
struct Connection {
    dev: ConnDev,
    gauges: Gauges,
    /// The session's /dev/fuse descriptor (a duplicate): tells whether the connection that
    /// `dev` names is still this daemon's before it is ended by number (a number freed by
    /// an ordinary unmount may already belong to another mount).
    device: std::os::fd::OwnedFd,
}

impl Connection {
    /// Whether this daemon's connection is still up (the device reports no error yet).
    fn alive(&self) -> bool {
        use std::os::fd::AsRawFd;
        !sys::poll_one(self.device.as_raw_fd(), 0, Duration::ZERO).unwrap_or(true)
    }

    /// Whether this mount namespace still holds a mount of the connection.
    fn mounted_here(&self) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map_or(true, |info| mount_watch::lists_device(&info, self.dev))
    }
}

/// Mounts the set and serves it on a session thread; returns once the mount answers.
fn mount(config: &Config, set: &Arc<ReplicaSet>) -> Result<Mounted, String> {
    let mountpoint = config.mountpoint.display().to_string();
    let io = KernelIo {
        passthrough: config.passthrough,
        direct_writes: config.direct_writes,
        io_uring: config.io_uring,
        cache_time: config.cache_time,
    };
    let fs = ChironFs::new(Arc::clone(set), MAX_WRITE, io);
    let gauges = fs.gauges();
    let mut session =
        fuser::Session::new(fs, &config.mountpoint, &fuse_config(config)).map_err(|e| {
            let _ = std::fs::remove_file(&config.status_file);
            format!("cannot mount {mountpoint}: {e}")
        })?;
    let unmounter = session.unmount_callable();
    let device = std::os::fd::AsFd::as_fd(&session)
        .try_clone_to_owned()
        .map_err(|e| format!("cannot keep a handle on the FUSE device: {e}"))?;
    let ended = Arc::new(AtomicBool::new(false));
    let session_thread = {
        let ended = Arc::clone(&ended);
        std::thread::Builder::new()
            .name("fuse-session".into())
            .spawn(move || {
                let r = session.run();
                ended.store(true, Ordering::SeqCst);
                r
            })
            .map_err(|e| format!("cannot start the FUSE threads: {e}"))?
    };
    let root = std::fs::metadata(&config.mountpoint)
        .map_err(|e| format!("the mount at {mountpoint} does not answer: {e}"))?;
    let dev = ConnDev {
        major: nix::sys::stat::major(root.dev()) as u32,
        minor: nix::sys::stat::minor(root.dev()) as u32,
    };
    Ok(Mounted {
        session_thread,
        unmounter,
        ended,
        conn: Connection {
            dev,
            gauges,
            device,
        },
    })
}

/// The health thread: once a second, the set's health check and journal compaction, and
/// freed memory given back after the kernel forgot many nodes (`rules::trim`).
fn spawn_health(set: &Arc<ReplicaSet>, stop: &Arc<AtomicBool>) -> Result<(), String> {
    let set = Arc::clone(set);
    let stop = Arc::clone(stop);
    let nodes = set.node_gauge();
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let mut trim = crate::rules::trim::Trim::default();
            while !stop.load(Ordering::SeqCst) {
                set.check_health();
                set.maybe_compact();
                if trim.look(nodes.load(Ordering::Relaxed)) {
                    sys::release_free_memory();
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the health thread: {e}"))
}

/// The signals the daemon acts on: SIGTERM/SIGINT unmount, SIGHUP reopens the log file.
struct Signals {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        let signals = Signals {
            term: Arc::new(AtomicBool::new(false)),
            hup: Arc::new(AtomicBool::new(false)),
        };
        let fail = |e: std::io::Error| format!("cannot install signal handlers: {e}");
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&signals.term)).map_err(fail)?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&signals.hup))
            .map_err(fail)?;
        Ok(signals)
    }

    /// Acts on the signals until the session has `ended` (an unmount, by us or by anyone),
    /// and ends the connection itself once its mount is gone from this namespace while the
    /// kernel keeps it (`mount_watch`).
    fn wait_for_end(
        &self,
        config: &Config,
        ended: &AtomicBool,
        unmounter: &mut fuser::SessionUnmounter,
        conn: &Connection,
    ) {
        let mountpoint = config.mountpoint.display();
        // Polled for mount table changes; without it the table is read every tick.
        let mounts = std::fs::File::open("/proc/self/mountinfo").ok();
        let mut watch = MountWatch::default();
        let (mut present, mut stopping, mut ending) = (true, false, false);
        while !ended.load(Ordering::SeqCst) {
            if self.term.swap(false, Ordering::SeqCst) {
                stopping = true;
                present = conn.mounted_here();
                if present {
                    log::info!("signal received: unmounting {mountpoint}");
                    unmount(config, unmounter, conn);
                    present = conn.mounted_here();
                } else {
                    log::info!("signal received: {mountpoint} is already unmounted here");
                }
            }
            if self.hup.swap(false, Ordering::SeqCst) {
                logging::reopen();
                log::info!("log file reopened");
            }
            let tick = Duration::from_millis(100);
            let changed = match &mounts {
                Some(f) => sys::wait_mount_change(f.as_fd(), tick),
                None => {
                    std::thread::sleep(tick);
                    true
                }
            };
            if present && changed {
                present = conn.mounted_here();
            }
            let open = conn.gauges.open_handles();
            if !ending && watch.look(present, open, stopping, Instant::now()) == Next::End {
                ending = true;
                end_connection(config, conn);
            }
        }
    }
}

/// Unmounts on SIGTERM; a busy mount is detached lazily (its open files keep working, and the
/// connection ends after the last one is closed).
fn unmount(config: &Config, unmounter: &mut fuser::SessionUnmounter, conn: &Connection) {
    if let Err(e) = unmounter.unmount() {
        if !conn.mounted_here() {
            return; // unmounted by someone else meanwhile
        }
        let mountpoint = config.mountpoint.display();
        log::warn!("unmount of {mountpoint} failed ({e}); detaching it lazily");
        if let Err(e) = nix::mount::umount2(&config.mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            log::error!("the lazy unmount of {mountpoint} failed too: {e}");
        }
    }
}

/// Ends a connection whose mount is gone from this namespace but which the kernel keeps (a
/// copy of the mount in another mount namespace): its request threads then end as at an
/// ordinary unmount.
fn end_connection(config: &Config, conn: &Connection) {
    if !conn.alive() {
        return; // ended by the unmount itself: its number may be another mount's by now
    }
    let mountpoint = config.mountpoint.display();
    match sys::abort_fuse_connection(conn.dev.kernel_number()) {
        Ok(true) => log::info!(
            "{mountpoint} is no longer mounted here but its FUSE connection lives on (a copy of \
             the mount in another mount namespace?): ended it"
        ),
        Ok(false) => {}
        Err(e) => log::error!(
            "cannot end the FUSE connection of {mountpoint}, which is no longer mounted here \
             ({e}): the daemon ends when the last mount of it elsewhere goes"
        ),
    }
}
