//! Unit tests of the command-line parsing and checks (moved from config.rs as they were, plus the
//! ones about the options table).

use super::*;
use fuser::MountOption;
use std::fs;
use tempfile::TempDir;

/// A temp tree with replicas `a`, `b` and mount point `mnt`, plus a plain file `file`.
struct Tree {
    dir: TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a", "b", "mnt"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        fs::write(dir.path().join("file"), b"x").unwrap();
        Tree { dir }
    }
    /// Path (as given on the command line) of `rel` inside the tree.
    fn p(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_str().unwrap().to_string()
    }
    /// Canonical path of `rel` inside the tree.
    fn c(&self, rel: &str) -> PathBuf {
        fs::canonicalize(self.dir.path().join(rel)).unwrap()
    }
    fn spec(&self) -> String {
        format!("{}={}", self.p("a"), self.p("b"))
    }
}

fn run(args: &[&str]) -> Result<Action, ConfigError> {
    let mut v = vec!["chironfs"];
    v.extend_from_slice(args);
    parse_args(v)
}

fn mount(args: &[&str]) -> Config {
    match run(args) {
        Ok(Action::Mount(c)) => *c,
        other => panic!("expected Mount for {args:?}, got {other:?}"),
    }
}

/// Runs and expects an error; checks it is a single `chironfs: ` line and returns it.
fn fail(args: &[&str]) -> String {
    match run(args) {
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
            assert!(msg.starts_with("chironfs: "), "bad prefix: {msg:?}");
            assert_eq!(msg, e.message());
            msg
        }
        Ok(a) => panic!("expected an error for {args:?}, got {a:?}"),
    }
}

#[test]
fn defaults() {
    let t = Tree::new();
    let spec = t.spec();
    let c = mount(&[&spec, &t.p("mnt")]);
    assert_eq!(
        c.replicas,
        vec![
            ReplicaSpec {
                path: t.c("a"),
                low_priority: false
            },
            ReplicaSpec {
                path: t.c("b"),
                low_priority: false
            },
        ]
    );
    assert_eq!(c.mountpoint, t.c("mnt"));
    assert!(!c.foreground && !c.debug && !c.quiet && !c.allow_other);
    assert_eq!(c.fsname, spec);
    assert_eq!(c.log_file, None);
    assert_eq!(c.timeout, Duration::from_secs(5));
    assert_eq!(c.threads, 8);
    assert_eq!(c.syslog_socket, PathBuf::from("/dev/log"));
    let name = runtime_name(&t.c("mnt"));
    assert_eq!(
        c.status_file,
        PathBuf::from(format!("/run/chironfs/{name}.status"))
    );
    assert_eq!(
        c.control_socket,
        PathBuf::from(format!("/run/chironfs/{name}.sock"))
    );
    assert!(c.mount_options.is_empty());
}

#[test]
fn runtime_names() {
    assert_eq!(runtime_name(Path::new("/mnt/data")), "mnt-data");
    assert_eq!(runtime_name(Path::new("/")), "root");
    assert_eq!(runtime_name(Path::new("/a/b/c")), "a-b-c");
    assert_eq!(runtime_name(Path::new("/srv")), "srv");
    assert_eq!(
        default_status_file(Path::new("/mnt/data")),
        PathBuf::from("/run/chironfs/mnt-data.status")
    );
    assert_eq!(
        default_control_socket(Path::new("/")),
        PathBuf::from("/run/chironfs/root.sock")
    );
}

#[test]
fn options_before_and_after_positionals() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let (spec, mnt) = (spec.as_str(), mnt.as_str());
    for args in [
        vec!["-f", "-q", spec, mnt],
        vec![spec, mnt, "-f", "-q"],
        vec!["-f", spec, "-q", mnt],
        vec![spec, "--foreground", mnt, "--quiet"],
    ] {
        let c = mount(&args);
        assert!(c.foreground && c.quiet, "{args:?}");
        assert!(!c.debug);
    }
}

#[test]
fn mount_fuse3_style() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let c = mount(&[&spec, &mnt, "-o", "rw,allow_other,nosuid,nodev"]);
    assert!(c.allow_other);
    assert_eq!(
        c.mount_options,
        vec![MountOption::RW, MountOption::NoSuid, MountOption::NoDev]
    );
    assert!(!c.foreground);
}

#[test]
fn debug_implies_foreground() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let (spec, mnt) = (spec.as_str(), mnt.as_str());
    for args in [
        vec!["-d", spec, mnt],
        vec![spec, mnt, "--debug"],
        vec![spec, mnt, "-o", "debug"],
    ] {
        let c = mount(&args);
        assert!(c.debug && c.foreground, "{args:?}");
    }
}

#[test]
fn o_splitting_and_own_keys() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let log = t.p("x.log");
    let opts = format!(
        "log={log},fsname=myfs,quiet,ctl=/tmp/c.sock,status_file=/tmp/s.status,\
         timeout=2.5,threads=4,syslog_socket=/tmp/sl,ro"
    );
    let c = mount(&[&spec, &mnt, "-o", &opts, "-o", "noexec,,allow_root"]);
    assert_eq!(c.log_file, Some(t.c(".").join("x.log")));
    assert_eq!(c.fsname, "myfs");
    assert!(c.quiet);
    assert_eq!(c.control_socket, PathBuf::from("/tmp/c.sock"));
    assert_eq!(c.status_file, PathBuf::from("/tmp/s.status"));
    assert_eq!(c.timeout, Duration::from_millis(2500));
    assert_eq!(c.threads, 4);
    assert_eq!(c.syslog_socket, PathBuf::from("/tmp/sl"));
    assert!(c.allow_other);
    assert_eq!(c.mount_options, vec![MountOption::RO, MountOption::NoExec]);

    // --fuseoptions is the long form of -o.
    let c = mount(&[&spec, &mnt, "--fuseoptions", "allow_other,sync"]);
    assert!(c.allow_other);
    assert_eq!(c.mount_options, vec![MountOption::Sync]);
}

#[test]
fn all_kernel_flags() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let c = mount(&[
        &spec,
        &mnt,
        "-o",
        "rw,ro,suid,nosuid,dev,nodev,exec,noexec,noatime,sync,async,dirsync",
    ]);
    use MountOption::*;
    assert_eq!(
        c.mount_options,
        vec![
            RW, RO, Suid, NoSuid, Dev, NoDev, Exec, NoExec, NoAtime, Sync, Async, DirSync
        ]
    );
}

#[test]
fn ignored_o_keys() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let c = mount(&[
        &spec,
        &mnt,
        "-o",
        "defaults,default_permissions,relatime,norelatime,lazytime,user,\
         nofail,_netdev,auto,noauto,subtype=chironfs,nonempty,x-systemd.automount",
    ]);
    assert!(c.mount_options.is_empty());
    assert!(!c.allow_other);
}

#[test]
fn access_times_on_reads_are_refused_in_one_sentence() {
    // chironfs mounts behave as noatime: asking for more is refused, not silently ignored.
    for key in ["strictatime", "atime"] {
        let msg = fail(&["/a=/b", "/m", "-o", key]);
        assert!(
            msg.contains(&format!("-o {key} cannot be honoured")) && msg.contains("noatime"),
            "{msg}"
        );
    }
}

#[test]
fn log_forms_agree() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let (spec, mnt) = (spec.as_str(), mnt.as_str());
    let log = t.p("x.log");
    let log = log.as_str();
    let want = Some(t.c(".").join("x.log"));
    let (eq, glued, opt) = (
        format!("--log={log}"),
        format!("-l{log}"),
        format!("log={log}"),
    );
    let (eq, glued, opt) = (eq.as_str(), glued.as_str(), opt.as_str());
    for args in [
        vec![spec, mnt, eq],
        vec![spec, mnt, "--log", log],
        vec!["-l", log, spec, mnt],
        vec![spec, mnt, glued],
        vec![spec, mnt, "-o", opt],
    ] {
        assert_eq!(mount(&args).log_file, want, "{args:?}");
    }
    // An existing log file is fine too.
    fs::write(t.dir.path().join("x.log"), b"").unwrap();
    assert_eq!(mount(&[spec, mnt, "--log", log]).log_file, want);
}

#[test]
fn cli_option_wins_over_o() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let c = mount(&[
        "-o",
        "fsname=fromo,timeout=9,threads=2",
        &spec,
        &mnt,
        "-n",
        "cli",
    ]);
    assert_eq!(c.fsname, "cli");
    assert_eq!(c.timeout, Duration::from_secs(9));
    let c = mount(&[
        &spec,
        &mnt,
        "-o",
        "timeout=9,threads=2",
        "-t",
        "1",
        "--threads",
        "3",
    ]);
    assert_eq!(c.timeout, Duration::from_secs(1));
    assert_eq!(c.threads, 3);
    // Repeating an option: the last one wins.
    let c = mount(&[&spec, &mnt, "-n", "one", "--fsname", "two"]);
    assert_eq!(c.fsname, "two");
}

#[test]
fn relative_paths_made_absolute() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let cwd = std::env::current_dir().unwrap();
    let c = mount(&[
        &spec,
        &mnt,
        "--status-file",
        "rel.status",
        "-c",
        "rel.sock",
        "--syslog-socket",
        "rel.log",
        "-l",
        "rel-test.log",
    ]);
    assert_eq!(c.status_file, cwd.join("rel.status"));
    assert_eq!(c.control_socket, cwd.join("rel.sock"));
    assert_eq!(c.syslog_socket, cwd.join("rel.log"));
    assert_eq!(
        c.log_file,
        Some(fs::canonicalize(&cwd).unwrap().join("rel-test.log"))
    );
    assert!(
        !cwd.join("rel-test.log").exists(),
        "parsing must not create the log"
    );
}

#[test]
fn unknown_option() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let m = fail(&[&spec, &mnt, "--bogus"]);
    assert_eq!(
        m,
        "chironfs: unknown option '--bogus'; try 'chironfs --help'"
    );
    let m = fail(&["-x", &spec, &mnt]);
    assert!(m.contains("'-x'"), "{m}");
    let m = fail(&[&spec, &mnt, "extra"]);
    assert!(m.contains("unexpected extra argument 'extra'"), "{m}");
    let m = fail(&[&spec, &mnt, "--log"]);
    assert!(
        m.contains("--log") && m.ends_with("try 'chironfs --help'"),
        "{m}"
    );
}

#[test]
fn unknown_o_key() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let m = fail(&[&spec, &mnt, "-o", "rw,foo"]);
    assert_eq!(
        m,
        "chironfs: unknown mount option 'foo'; try 'chironfs --help'"
    );
    let m = fail(&[&spec, &mnt, "-o", "big_writes"]);
    assert!(m.contains("unknown mount option 'big_writes'"), "{m}");
    let m = fail(&[&spec, &mnt, "-o", "log="]);
    assert!(m.contains("'log' needs a value"), "{m}");
    let m = fail(&[&spec, &mnt, "-o", "quiet=yes"]);
    assert!(m.contains("'quiet' takes no value"), "{m}");
    let m = fail(&[&spec, &mnt, "-o", "ro=1"]);
    assert!(m.contains("'ro' takes no value"), "{m}");
}

#[test]
fn missing_positionals() {
    let m = fail(&[]);
    assert!(
        m.contains("missing the replica list and the mount point"),
        "{m}"
    );
    let m = fail(&["/a=/b"]);
    assert!(m.contains("missing the mount point"), "{m}");
    let m = fail(&["-f"]);
    assert!(m.contains("missing"), "{m}");
}

#[test]
fn help_and_version() {
    for flag in ["-h", "--help", "-?"] {
        match run(&[flag]) {
            Ok(Action::Help(h)) => {
                assert!(h.contains("Usage: chironfs"), "{h}");
                assert!(h.contains("--timeout"), "{h}");
                assert!(!h.ends_with('\n'));
            }
            other => panic!("{flag}: {other:?}"),
        }
    }
    // Help wins even with other arguments around it.
    assert!(matches!(run(&["/a=/b", "/m", "-h"]), Ok(Action::Help(_))));
    let want = format!("chironfs {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(run(&["-V"]), Ok(Action::Version(want.clone())));
    assert_eq!(run(&["--version"]), Ok(Action::Version(want)));
    assert_eq!(help_text(), help_text().trim_end());
}

#[test]
fn split_spec_basic() {
    assert_eq!(
        split_spec("/a=/b").unwrap(),
        vec![("/a".to_string(), false), ("/b".to_string(), false)]
    );
    assert_eq!(
        split_spec(":/a=/b=:rel").unwrap(),
        vec![
            ("/a".to_string(), true),
            ("/b".to_string(), false),
            ("rel".to_string(), true)
        ]
    );
}

#[test]
fn split_spec_all_low_is_all_normal() {
    assert_eq!(
        split_spec(":/a=:/b").unwrap(),
        vec![("/a".to_string(), false), ("/b".to_string(), false)]
    );
    let t = Tree::new();
    let spec = format!(":{}=:{}", t.p("a"), t.p("b"));
    let c = mount(&[&spec, &t.p("mnt")]);
    assert!(c.replicas.iter().all(|r| !r.low_priority));
    assert_eq!(c.fsname, spec);
}

#[test]
fn split_spec_empty_entries() {
    let cases = [
        ("/a==/b", 2),
        ("/a=/b=", 3),
        ("=/a=/b", 1),
        ("/a=:", 2),
        ("/a=:=/b", 2),
    ];
    for (spec, pos) in cases {
        let m = split_spec(spec).unwrap_err().to_string();
        assert!(
            m.starts_with(&format!(
                "chironfs: replica {pos} of the replica list '{spec}'"
            )),
            "{spec}: {m}"
        );
        assert!(!m.contains('\n'));
    }
    assert!(
        split_spec("/a=:")
            .unwrap_err()
            .to_string()
            .contains("only ':'")
    );
    assert!(
        split_spec("")
            .unwrap_err()
            .to_string()
            .contains("replica list is empty")
    );
}

#[test]
fn fewer_than_two_replicas() {
    for spec in ["/a", ":/a"] {
        let m = split_spec(spec).unwrap_err().to_string();
        assert_eq!(
            m,
            format!(
                "chironfs: at least two replicas separated by '=' are needed; got one: '{spec}'"
            )
        );
    }
    let t = Tree::new();
    let m = fail(&[&t.p("a"), &t.p("mnt")]);
    assert!(m.contains("at least two replicas"), "{m}");
}

#[test]
fn duplicates() {
    let t = Tree::new();
    let mnt = t.p("mnt");
    let a = t.p("a");
    let m = fail(&[&format!("{a}={a}"), &mnt]);
    assert_eq!(m, format!("chironfs: replica '{a}' is listed twice"));
    let m = fail(&[&format!("{a}={}={a}/.", t.p("b")), &mnt]);
    assert!(m.contains("are the same directory"), "{m}");
    std::os::unix::fs::symlink(t.c("a"), t.dir.path().join("link")).unwrap();
    let m = fail(&[&format!("{a}={}", t.p("link")), &mnt]);
    assert!(m.contains("are the same directory"), "{m}");
}

#[test]
fn nesting() {
    let t = Tree::new();
    fs::create_dir(t.dir.path().join("a/sub")).unwrap();
    fs::create_dir(t.dir.path().join("mnt/sub")).unwrap();
    fs::create_dir(t.dir.path().join("a/m")).unwrap();
    let (a, sub, mnt) = (t.p("a"), t.p("a/sub"), t.p("mnt"));
    let m = fail(&[&format!("{a}={sub}"), &mnt]);
    assert_eq!(
        m,
        format!("chironfs: replica '{sub}' is inside replica '{a}'")
    );
    let m = fail(&[&format!("{sub}={a}"), &mnt]);
    assert_eq!(
        m,
        format!("chironfs: replica '{sub}' is inside replica '{a}'")
    );
    // Replica == mount point.
    let m = fail(&[&format!("{}={mnt}", t.p("b")), &mnt]);
    assert!(m.contains("is the mount point"), "{m}");
    // Replica inside the mount point.
    let m = fail(&[&format!("{}={}", t.p("b"), t.p("mnt/sub")), &mnt]);
    assert!(m.contains("is inside the mount point"), "{m}");
    // Mount point inside a replica.
    let m = fail(&[&t.spec(), &t.p("a/m")]);
    assert!(m.contains("the mount point") && m.contains(&format!("inside replica '{a}'")));
    // Siblings sharing a name prefix are not nested.
    fs::create_dir(t.dir.path().join("ab")).unwrap();
    mount(&[&format!("{a}={}", t.p("ab")), &mnt]);
}

#[test]
fn missing_and_non_directory() {
    let t = Tree::new();
    let mnt = t.p("mnt");
    let missing = t.p("nope");
    let m = fail(&[&format!("{}={missing}", t.p("a")), &mnt]);
    assert_eq!(
        m,
        format!("chironfs: replica '{missing}' cannot be used: No such file or directory")
    );
    let file = t.p("file");
    let m = fail(&[&format!("{}={file}", t.p("a")), &mnt]);
    assert_eq!(m, format!("chironfs: replica '{file}' is not a directory"));
    let m = fail(&[&t.spec(), &missing]);
    assert!(
        m.contains("mount point") && m.contains("No such file or directory"),
        "{m}"
    );
    let m = fail(&[&t.spec(), &file]);
    assert_eq!(
        m,
        format!("chironfs: mount point '{file}' is not a directory")
    );
}

#[test]
fn colon_mountpoint() {
    let t = Tree::new();
    let m = fail(&[&t.spec(), &format!(":{}", t.p("mnt"))]);
    assert_eq!(
        m,
        "chironfs: a ':' before the mount point is not supported; list that directory as \
         a replica instead"
    );
}

#[test]
fn log_inside_mount() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let inside = t.p("mnt/x.log");
    let m = fail(&[&spec, &mnt, "--log", &inside]);
    assert!(
        m.contains("log file") && m.contains("inside the mount point"),
        "{m}"
    );
    // Through a `..` detour it is still caught.
    let detour = format!("{}/../mnt/y.log", t.p("a"));
    let m = fail(&[&spec, &mnt, "-o", &format!("log={detour}")]);
    assert!(m.contains("inside the mount point"), "{m}");
    // Missing directory.
    let m = fail(&[&spec, &mnt, "--log", &t.p("nodir/x.log")]);
    assert!(m.contains("No such file or directory"), "{m}");
    // A directory is not a log file.
    let m = fail(&[&spec, &mnt, "--log", &t.p("b")]);
    assert!(m.contains("is a directory"), "{m}");
    // Status file and control socket inside the mount are rejected too.
    let m = fail(&[&spec, &mnt, "--status-file", &t.p("mnt/s")]);
    assert!(m.contains("status file"), "{m}");
    let m = fail(&[&spec, &mnt, "-o", &format!("ctl={}", t.p("mnt/c"))]);
    assert!(m.contains("control socket"), "{m}");
}

#[test]
fn lease_time_leaves_room_to_fence_and_the_witness_is_a_directory_of_its_own() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    assert_eq!(mount(&[&spec, &mnt]).lease_time, None);
    let m = mount(&[&spec, &mnt, "--timeout", "2", "-o", "lease_time=4.5"]);
    assert_eq!(m.lease_time, Some(Duration::from_millis(4500)));
    let m = fail(&[&spec, &mnt, "--timeout", "5", "--lease-time", "6"]);
    assert!(
        m.contains("--lease-time 6 s is too short for --timeout 5 s: at least 7 s"),
        "{m}"
    );
    fs::create_dir(t.p("w")).unwrap();
    let w = mount(&[&spec, &mnt, "--witness", &t.p("w")]);
    assert_eq!(w.witness, Some(t.c("w")));
    let m = fail(&[&spec, &mnt, "--witness", &t.p("a")]);
    assert!(
        m.contains("neither a replica nor inside the mount point"),
        "{m}"
    );
    let m = fail(&[&spec, &mnt, "-o", &format!("witness={}", t.p("nowhere"))]);
    assert!(m.contains("witness"), "{m}");
    assert!(mount(&[&spec, &mnt, "--strict-majority"]).strict_majority);
    assert!(mount(&[&spec, &mnt, "-o", "no_new_set"]).no_new_set);
    assert!(!mount(&[&spec, &mnt]).no_new_set);
}

#[test]
fn quorum_is_off_auto_or_a_count_within_the_replicas() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    assert_eq!(mount(&[&spec, &mnt]).quorum, None);
    assert_eq!(mount(&[&spec, &mnt, "--quorum", "auto"]).quorum, Some(2));
    assert_eq!(mount(&[&spec, &mnt, "--quorum=1"]).quorum, Some(1));
    assert_eq!(mount(&[&spec, &mnt, "-o", "quorum=auto"]).quorum, Some(2));
    // The command line wins over -o, "off" included.
    assert_eq!(
        mount(&[&spec, &mnt, "-o", "quorum=2", "--quorum", "off"]).quorum,
        None
    );
    let m = fail(&[&spec, &mnt, "--quorum", "3"]);
    assert!(
        m.contains("invalid --quorum") && m.contains("give 1 to 2"),
        "{m}"
    );
    let m = fail(&[&spec, &mnt, "--quorum", "0"]);
    assert!(m.contains("invalid --quorum"), "{m}");
    let m = fail(&[&spec, &mnt, "--quorum", "most"]);
    assert!(m.contains("--quorum") && m.contains("'most'"), "{m}");
    let m = fail(&[&spec, &mnt, "-o", "quorum=x"]);
    assert!(m.contains("quorum=x"), "{m}");
}

#[test]
fn force_source_names_a_replica_by_index_or_path() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    assert_eq!(mount(&[&spec, &mnt]).force_source, None);
    assert_eq!(
        mount(&[&spec, &mnt, "--force-source", "1"]).force_source,
        Some(1)
    );
    let b = t.p("b");
    assert_eq!(
        mount(&[&spec, &mnt, "-o", &format!("force_source={b}")]).force_source,
        Some(1)
    );
    let m = fail(&[&spec, &mnt, "--force-source", "7"]);
    assert!(m.contains("not one of the replicas"), "{m}");
    let m = fail(&[&spec, &mnt, "--force-source", &t.p("mnt")]);
    assert!(m.contains("not one of the replicas"), "{m}");
}

#[test]
fn resync_rate_and_auto_resync() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let c = mount(&[&spec, &mnt]);
    assert_eq!((c.resync_rate, c.auto_resync), (0, false));
    let c = mount(&[&spec, &mnt, "--resync-rate", "50M", "--auto-resync"]);
    assert_eq!((c.resync_rate, c.auto_resync), (50 << 20, true));
    let c = mount(&[&spec, &mnt, "-o", "resync_rate=800K,auto_resync"]);
    assert_eq!((c.resync_rate, c.auto_resync), (800 << 10, true));
    let c = mount(&[
        &spec,
        &mnt,
        "-o",
        "resync_rate=1G",
        "--resync-rate=unlimited",
    ]);
    assert_eq!(c.resync_rate, 0, "the command-line option wins");
    let m = fail(&[&spec, &mnt, "--resync-rate", "fast"]);
    assert!(m.contains("not a rate"), "{m}");
    let m = fail(&[&spec, &mnt, "-o", "resync_rate=1K"]);
    assert!(m.contains("resync_rate") && m.contains("minimum"), "{m}");
    let m = fail(&[&spec, &mnt, "-o", "auto_resync=yes"]);
    assert!(m.contains("takes no value"), "{m}");
}

#[test]
fn journal_max_takes_sizes_with_suffixes() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    assert_eq!(mount(&[&spec, &mnt]).journal_max, 16 << 20);
    assert_eq!(
        mount(&[&spec, &mnt, "--journal-max", "512K"]).journal_max,
        512 << 10
    );
    assert_eq!(
        mount(&[&spec, &mnt, "-o", "journal_max=8192"]).journal_max,
        8192
    );
    for bad in ["100", "x", "5G", "1.5M"] {
        let m = fail(&[&spec, &mnt, "--journal-max", bad]);
        assert!(m.contains("4K to 4G"), "{bad}: {m}");
    }
}

#[test]
fn timeout_and_threads_values() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    assert_eq!(
        mount(&[&spec, &mnt, "--timeout=2.5"]).timeout,
        Duration::from_millis(2500)
    );
    assert_eq!(
        mount(&[&spec, &mnt, "-t", "0.1"]).timeout,
        Duration::from_millis(100)
    );
    for bad in ["0", "-1", "abc", "nan", "inf", "", "1e9", "0.0"] {
        let m = fail(&[&spec, &mnt, "-t", bad]);
        assert!(
            m.contains("invalid value") && m.contains("--timeout"),
            "{bad}: {m}"
        );
        let m = fail(&[&spec, &mnt, "-o", &format!("timeout={bad}")]);
        assert!(m.contains("timeout"), "{bad}: {m}");
    }
    assert_eq!(mount(&[&spec, &mnt, "--threads", "64"]).threads, 64);
    assert_eq!(mount(&[&spec, &mnt, "-o", "threads=1"]).threads, 1);
    for bad in ["0", "65", "-2", "x", "1.5"] {
        let m = fail(&[&spec, &mnt, "--threads", bad]);
        assert!(m.contains("1 to 64"), "{bad}: {m}");
        let m = fail(&[&spec, &mnt, "-o", &format!("threads={bad}")]);
        assert!(m.contains("threads"), "{bad}: {m}");
    }
}

#[test]
fn passthrough_is_on_unless_switched_off() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    assert!(mount(&[&spec, &mnt]).passthrough);
    assert!(!mount(&[&spec, &mnt, "--passthrough", "off"]).passthrough);
    assert!(!mount(&[&spec, &mnt, "-o", "passthrough=no"]).passthrough);
    assert!(mount(&[&spec, &mnt, "-o", "passthrough=off", "--passthrough=on"]).passthrough);
    assert!(mount(&[&spec, &mnt]).direct_writes);
    assert!(!mount(&[&spec, &mnt, "-o", "direct_writes=off"]).direct_writes);
    assert!(!mount(&[&spec, &mnt, "--direct-writes", "off"]).direct_writes);
    assert!(mount(&[&spec, &mnt]).io_uring);
    assert!(!mount(&[&spec, &mnt, "-o", "io_uring=off"]).io_uring);
    assert!(!mount(&[&spec, &mnt, "--io-uring", "no"]).io_uring);
    assert!(mount(&[&spec, &mnt, "-o", "io_uring=off", "--io-uring=on"]).io_uring);
    let m = fail(&[&spec, &mnt, "-o", "passthrough=maybe"]);
    assert!(m.contains("passthrough") && m.contains("on or off"), "{m}");
    let m = fail(&[&spec, &mnt, "--passthrough", "sometimes"]);
    assert!(m.contains("on or off"), "{m}");
}

#[test]
fn error_trait() {
    let e: Box<dyn std::error::Error> = Box::new(split_spec("/a").unwrap_err());
    assert!(e.to_string().starts_with("chironfs: "));
    assert!(!split_spec("/a").unwrap_err().is_usage());
    assert!(run(&["--bogus"]).unwrap_err().is_usage());
}

#[test]
fn cache_time_takes_zero_to_an_hour() {
    let t = Tree::new();
    let c = mount(&[&t.spec(), &t.p("mnt"), "--cache-time", "0.5"]);
    assert_eq!(c.cache_time, std::time::Duration::from_millis(500));
    let c = mount(&[&t.spec(), &t.p("mnt"), "-o", "cache_time=0"]);
    assert!(c.cache_time.is_zero());
    for bad in ["-1", "3601", "x", "nan"] {
        fail(&[&t.spec(), &t.p("mnt"), "--cache-time", bad]);
    }
}

#[test]
fn command_definition_is_consistent() {
    command().debug_assert();
}

#[test]
fn defaults_in_the_table_match_the_constants() {
    let t = Tree::new();
    let c = mount(&[&t.spec(), &t.p("mnt")]);
    assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    assert_eq!(c.threads, DEFAULT_THREADS);
    assert_eq!(c.cache_time, DEFAULT_CACHE_TIME);
    assert_eq!(c.syslog_socket, PathBuf::from(DEFAULT_SYSLOG_SOCKET));
    assert_eq!(
        u64::from(c.journal_max),
        crate::engine::journal::DEFAULT_MAX_BYTES
    );
    assert_eq!(
        (c.passthrough, c.direct_writes, c.io_uring),
        (true, true, true)
    );
    assert_eq!((c.quorum, c.resync_rate, c.force_source), (None, 0, None));
}

/// Every `-o` key is its option: `-o key=V` and `--long=V` give the same configuration (or
/// both fail), V being the option's default, or "0" (valid for each option without one).
#[test]
fn every_mount_key_agrees_with_its_option() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    let mut keys = 0;
    for opt in options::OPTIONS {
        let Some(key) = opt.mount_key() else {
            continue;
        };
        keys += 1;
        let arg = opt.arg();
        let (long, item) = if arg.get_action().takes_values() {
            let value = arg
                .get_default_values()
                .first()
                .map_or("0".to_string(), |v| v.to_string_lossy().into_owned());
            (format!("--{}={value}", opt.long), format!("{key}={value}"))
        } else {
            (format!("--{}", opt.long), key.clone())
        };
        let by_long = run(&[&spec, &mnt, &long]);
        let by_o = run(&[&spec, &mnt, "-o", &item]);
        match (&by_long, &by_o) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{long} vs -o {item}"),
            (Err(_), Err(_)) => {}
            _ => panic!("{long}: {by_long:?}; -o {item}: {by_o:?}"),
        }
        assert!(help_text().contains(&key), "-o {key} missing from --help");
    }
    assert_eq!(keys, 23);
    // Command-line-only options have no -o key.
    for key in ["foreground", "fuseoptions", "help", "version"] {
        let m = fail(&[&spec, &mnt, "-o", key]);
        assert!(m.contains("unknown mount option"), "{m}");
    }
}

#[test]
fn mount_keys_of_options_and_kernel_keys_do_not_overlap() {
    for opt in options::OPTIONS {
        if let Some(key) = opt.mount_key() {
            assert!(
                !mount_opts::KERNEL.iter().any(|(k, _)| *k == key)
                    && !mount_opts::IGNORED.contains(&key.as_str())
                    && !key.starts_with("x-"),
                "-o {key} is taken"
            );
        }
    }
    for (key, _) in mount_opts::KERNEL {
        assert!(!mount_opts::IGNORED.contains(key), "{key}");
    }
}

#[test]
fn option_values_are_checked_alike_on_the_command_line_and_in_o() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    // The reason is the same; only the way the value is named differs.
    let m = fail(&[&spec, &mnt, "--journal-max", "1K"]);
    assert_eq!(
        m,
        "chironfs: invalid value '1K' for '--journal-max <SIZE>': '1K' is not a size from 4K \
         to 4G - 1 (e.g. 4096, 512K, 16M); try 'chironfs --help'"
    );
    let m = fail(&[&spec, &mnt, "-o", "journal_max=1K"]);
    assert_eq!(
        m,
        "chironfs: invalid value in mount option 'journal_max=1K': '1K' is not a size from 4K \
         to 4G - 1 (e.g. 4096, 512K, 16M); try 'chironfs --help'"
    );
    let m = fail(&[&spec, &mnt, "--quorum", "most"]);
    assert_eq!(
        m,
        "chironfs: invalid value for --quorum: 'most' is not auto, off or a number of \
         replicas; try 'chironfs --help'"
    );
    let m = fail(&[&spec, &mnt, "-o", "quorum=most"]);
    assert_eq!(
        m,
        "chironfs: invalid value in mount option 'quorum=most': 'most' is not auto, off or a \
         number of replicas; try 'chironfs --help'"
    );
    // -o items are checked even when the command line overrides them, and before the
    // command line's own late checks.
    let m = fail(&[&spec, &mnt, "--quorum", "x", "-o", "timeout=abc,quorum=2"]);
    assert!(m.contains("'timeout=abc'"), "{m}");
}

#[test]
fn remount_changes_the_flags_and_checks_no_directory() {
    // What mount.fuse3 passes for `mount -o remount,ro MNT`: the mount table's options too.
    match run(&[
        "/no/a=/no/b",
        "/m",
        "-o",
        "ro,nosuid,relatime,remount,user_id=0,group_id=0",
    ]) {
        Ok(Action::Remount { mountpoint, flags }) => {
            assert_eq!(mountpoint, PathBuf::from("/m"));
            assert_eq!(flags, vec![MountOption::RO, MountOption::NoSuid]);
        }
        other => panic!("expected Remount, got {other:?}"),
    }
    // The kernel's own options are no options of a new mount.
    let msg = fail(&["/a=/b", "/m", "-o", "user_id=0"]);
    assert!(msg.contains("unknown mount option 'user_id=0'"), "{msg}");
}

#[test]
fn metrics_listen_is_off_by_default_and_takes_an_address_and_port() {
    let t = Tree::new();
    let (spec, mnt) = (t.spec(), t.p("mnt"));
    assert_eq!(mount(&[&spec, &mnt]).metrics_listen, None);
    let c = mount(&[&spec, &mnt, "--metrics-listen", "127.0.0.1:9580"]);
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9580".parse().unwrap()));
    let c = mount(&[&spec, &mnt, "-o", "metrics_listen=[::1]:9580"]);
    assert_eq!(c.metrics_listen, Some("[::1]:9580".parse().unwrap()));
    let m = fail(&[&spec, &mnt, "--metrics-listen", "9580"]);
    assert!(m.contains("metrics-listen"), "{m}");
}

#[test]
fn the_metrics_file_sits_next_to_the_status_file() {
    let f = |s: &str| metrics_file_of(Path::new(s));
    assert_eq!(
        f("/run/chironfs/mnt-a.status"),
        Path::new("/run/chironfs/mnt-a.prom")
    );
    assert_eq!(f("/var/tmp/status"), Path::new("/var/tmp/status.prom"));
    assert_eq!(f("/var/tmp/x.prom"), Path::new("/var/tmp/x.prom.prom"));
}
