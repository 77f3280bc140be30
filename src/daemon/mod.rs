//! Start-up and shutdown of the chironfs daemon: daemonize (returning only once the mount
//! answers), open the replicas, mount, keep the status file, control socket and health checks
//! running, and unmount cleanly on SIGTERM/SIGINT.

pub mod logging;
pub mod status_writer;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fuser::{MountOption, SessionACL};

use crate::config::Config;
use crate::control::server::spawn_server;
use crate::engine::replica::Replica;
use crate::engine::set::ReplicaSet;
use crate::fuse::{ChironFs, KernelIo};
use crate::sys;
use crate::view::snapshot::ControlHandler;
use logging::LogTargets;

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1024 * 1024;

/// Runs the daemon; returns the process exit code.
pub fn run(config: Config) -> i32 {
    sys::clear_umask();
    sys::raise_nofile_limit();
    if config.foreground {
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
    // SAFETY: no thread has been started yet (replicas, FUSE and logging start after this),
    // so the child is a faithful single-threaded copy.
    match unsafe { nix::unistd::fork() } {
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
                    if !config.quiet {
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
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
        }
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
/// answers (daemon mode), or the error.
fn serve(config: &Config, parent: Option<ParentPipe>) -> Result<(), String> {
    let explicit_syslog = config.syslog_socket != std::path::Path::new("/dev/log");
    logging::init(&LogTargets {
        stderr: config.foreground,
        quiet: config.quiet,
        syslog: (!config.foreground || explicit_syslog).then(|| config.syslog_socket.clone()),
        file: config.log_file.clone(),
        debug: config.debug,
    })?;
    let mut replicas = Vec::new();
    for (index, spec) in config.replicas.iter().enumerate() {
        let r = Replica::open(
            index,
            spec.path.clone(),
            spec.low_priority,
            config.threads + 2,
        )
        .map_err(|e| format!("cannot open replica {}: {e}", spec.path.display()))?;
        replicas.push(r);
    }
    let mountpoint = config.mountpoint.display().to_string();
    let quorum = crate::rules::quorum::Quorum::new(
        config.quorum.map(usize::from),
        replicas.len(),
        mountpoint.clone(),
    );
    let set = ReplicaSet::new(replicas, config.timeout, mountpoint.clone())
        .with_quorum(quorum)
        .shared();
    set.set_resync_rate(config.resync_rate);
    if config.auto_resync {
        set.enable_auto_resync();
    }
    set.recover_at_mount(config.force_source.map(usize::from), config.journal_max)?;
    // The control socket first: a second daemon on the same socket is refused before it
    // mounts anything or writes a status file.
    let stop = Arc::new(AtomicBool::new(false));
    let handler: Arc<dyn ControlHandler> = set.clone();
    // A daemon that was just unmounted may still hold the socket for a moment: an immediate
    // remount (an OCF restart) waits for it up to 3 s before giving up.
    let mut attempts = 0;
    let control = loop {
        match spawn_server(
            &config.control_socket,
            Arc::clone(&handler),
            Arc::clone(&stop),
        ) {
            Ok(server) => break server,
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
    };
    status_writer::write_now(&config.status_file, handler.as_ref()).map_err(|e| {
        format!(
            "cannot write the status file {}: {e}",
            config.status_file.display()
        )
    })?;
    let io = KernelIo {
        passthrough: config.passthrough,
        direct_writes: config.direct_writes,
        io_uring: config.io_uring,
    };
    let fs = ChironFs::new(Arc::clone(&set), MAX_WRITE, io);
    let mut session =
        fuser::Session::new(fs, &config.mountpoint, &fuse_config(config)).map_err(|e| {
            let _ = std::fs::remove_file(&config.status_file);
            format!("cannot mount {mountpoint}: {e}")
        })?;
    let mut unmounter = session.unmount_callable();
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
    std::fs::metadata(&config.mountpoint)
        .map_err(|e| format!("the mount at {mountpoint} does not answer: {e}"))?;

    let status_thread = status_writer::spawn_writer(
        config.status_file.clone(),
        handler,
        Duration::from_secs(1),
        Arc::clone(&stop),
    );
    {
        let set = Arc::clone(&set);
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    set.check_health();
                    set.maybe_compact();
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .map_err(|e| format!("cannot start the health thread: {e}"))?;
    }

    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;

    log::info!(
        "mounted {} on {mountpoint} ({} replicas, timeout {:.1} s, status {}, control {})",
        config.fsname,
        config.replicas.len(),
        config.timeout.as_secs_f64(),
        config.status_file.display(),
        config.control_socket.display()
    );
    // Report success and close the pipe so the parent returns now.
    if let Some(mut p) = parent.and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).take()) {
        let _ = p.write_all(b"OK");
    }

    while !ended.load(Ordering::SeqCst) {
        if term.swap(false, Ordering::SeqCst) {
            log::info!("signal received: unmounting {mountpoint}");
            if let Err(e) = unmounter.unmount() {
                log::warn!("unmount of {mountpoint} failed ({e}); detaching it lazily");
                let _ = nix::mount::umount2(&config.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if hup.swap(false, Ordering::SeqCst) {
            logging::reopen();
            log::info!("log file reopened");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    control.shutdown();
    let _ = status_thread.join();
    let result = session_thread.join();
    set.write_clean_shutdown();
    log::info!("unmounted {mountpoint}");
    match result {
        Ok(Ok(())) | Ok(Err(_)) => Ok(()),
        Err(_) => Err("the FUSE session panicked".into()),
    }
}
