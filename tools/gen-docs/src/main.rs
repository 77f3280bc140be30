//! `gen-docs OUTDIR [--ocf-agent PATH]`: writes the man pages chironfs(8), chironctl(8) and
//! ocf_chiron_chironfs(7) and the bash, zsh and fish completions of both programs under
//! OUTDIR, from the clap definitions the programs parse with and from the OCF agent's
//! meta-data. Run by the packaging (debian/rules, rpm/chironfs.spec); see README.md.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Arg, ArgAction, Command, ValueHint};
use clap_complete::Shell;
use clap_mangen::Man;
use roff::{Roff, bold, italic, roman};

/// Header fields shared by every page.
struct Meta {
    date: String,
    version: String,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out: Option<PathBuf> = None;
    let mut agent: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ocf-agent" => match it.next() {
                Some(p) => agent = Some(PathBuf::from(p)),
                None => return usage("--ocf-agent needs a path"),
            },
            "-h" | "--help" => {
                println!("usage: gen-docs OUTDIR [--ocf-agent PATH]");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with('-') => return usage(&format!("unknown option {s}")),
            s if out.is_none() => out = Some(PathBuf::from(s)),
            s => return usage(&format!("unexpected argument {s}")),
        }
    }
    let Some(out) = out else {
        return usage("missing OUTDIR");
    };
    match generate(&out, agent.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-docs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("gen-docs: {msg}\nusage: gen-docs OUTDIR [--ocf-agent PATH]");
    ExitCode::from(2)
}

fn generate(out: &Path, agent: Option<&Path>) -> Result<(), String> {
    let meta = Meta {
        date: page_date(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let man = out.join("man");
    fs::create_dir_all(&man).map_err(|e| format!("cannot create {}: {e}", man.display()))?;
    write(&man.join("chironfs.8"), &chironfs_page(&meta))?;
    write(&man.join("chironctl.8"), &chironctl_page(&meta))?;
    match agent {
        Some(path) if path.exists() => {
            let xml = agent_meta_data(path)?;
            write(
                &man.join("ocf_chiron_chironfs.7"),
                &ocf_page(&meta, &xml)
                    .map_err(|e| format!("{}: meta-data: {e}", path.display()))?,
            )?;
        }
        Some(path) => eprintln!(
            "gen-docs: {} does not exist: ocf_chiron_chironfs.7 not generated",
            path.display()
        ),
        None => {}
    }
    for (shell, dir, name) in [
        (Shell::Bash, "bash", "{}"),
        (Shell::Zsh, "zsh", "_{}"),
        (Shell::Fish, "fish", "{}.fish"),
    ] {
        let dir = out.join("completions").join(dir);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for (bin, mut cmd) in [
            ("chironfs", chironfs_command()),
            ("chironctl", chironfs::control::cli::command()),
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, bin, &mut buf);
            write(&dir.join(name.replace("{}", bin)), &buf)?;
        }
    }
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The page date: `SOURCE_DATE_EPOCH` (reproducible builds) or today, as YYYY-MM-DD.
fn page_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    // The log prefix already renders UTC dates: YYYY-MM-DDTHH:MM:SSZ, keep the date part.
    chironfs::daemon::logging::utc_timestamp(secs)[..10].to_owned()
}

/// chironfs's command with its two positionals shown (the help text describes them in its
/// template instead) and typed for completion.
fn chironfs_command() -> Command {
    let cmd = chironfs::config::command();
    // NAME wants a short line; the full text stays in DESCRIPTION.
    let long = cmd.get_about().map(|s| s.to_string()).unwrap_or_default();
    cmd.about("replicating FUSE filesystem (successor of ChironFS)")
        .long_about(long)
        .mut_arg("spec", |a| {
            a.hide(false).required(true).help(
                "Replica directories separated by '=' (':' before a path = low read priority)",
            )
        })
        .mut_arg("mountpoint", |a| {
            a.hide(false)
                .required(true)
                .value_hint(ValueHint::DirPath)
                .help("Existing directory to mount the replicated tree on")
        })
}

fn man_of(cmd: Command, section: &str, meta: &Meta) -> Man {
    Man::new(cmd)
        .section(section)
        .date(meta.date.clone())
        .source(format!("chironfs {}", meta.version))
        .manual("System Administration")
}

/// Appends the rendering of one `Man` part to `out`.
fn part(out: &mut Vec<u8>, f: impl FnOnce(&mut dyn Write) -> io::Result<()>) {
    // Writing to a Vec cannot fail.
    let _ = f(out);
}

fn chironfs_page(meta: &Meta) -> Vec<u8> {
    let cmd = chironfs_command();
    let after_help = cmd
        .get_after_help()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let man = man_of(cmd, "8", meta);
    let mut out = Vec::new();
    part(&mut out, |w| man.render_title(w));
    part(&mut out, |w| man.render_name_section(w));
    part(&mut out, |w| man.render_synopsis_section(w));
    let mut r = Roff::new();
    r.control("br", []).text([
        bold("mount -t fuse.chironfs"),
        roman(" "),
        italic("[:]PATH=[:]PATH[=...] MOUNTPOINT"),
        roman(" ["),
        bold("-o"),
        roman(" "),
        italic("OPTS"),
        roman("]"),
    ]);
    out.extend(r.render().into_bytes());
    part(&mut out, |w| man.render_description_section(w));
    let mut r = Roff::new();
    r.control("PP", [])
        .text([roman(
            "The replicas are existing directories (local disks, or NFS or SSHFS mounts of \
             other servers). Every change is applied to every in-service replica before it is \
             acknowledged. Reads are served by one replica; a replica that fails or does not \
             answer within the timeout is taken out of service (logged at ALERT severity to \
             syslog) and the mount keeps serving from the others. A replica that missed writes \
             is never put back silently: see ",
        )])
        .text([bold("chironctl"), roman("(8).")])
        .control("PP", [])
        .text([roman(
            "Without -f or -d, chironfs returns once the mount answers and keeps running in \
             the background. It is also started by ",
        )])
        .text([
            bold("mount"),
            roman("(8) (type "),
            bold("fuse.chironfs"),
            roman(", through "),
        ])
        .text([
            bold("mount.fuse3"),
            roman("(8)), from "),
            bold("/etc/fstab"),
            roman(","),
        ])
        .text([
            roman("by the systemd unit "),
            bold("chironfs@.service"),
            roman(","),
        ])
        .text([
            roman("or by a cluster through the OCF agent "),
            bold("ocf:chiron:chironfs"),
        ])
        .text([roman("("), bold("ocf_chiron_chironfs"), roman("(7)).")]);
    out.extend(r.render().into_bytes());
    part(&mut out, |w| man.render_options_section(w));
    out.extend(preformatted_section("DETAILS", &after_help).into_bytes());
    let mut r = Roff::new();
    r.control("SH", ["SIGNALS"])
        .control("TP", [])
        .text([bold("SIGTERM"), roman(", "), bold("SIGINT")])
        .text([roman("Unmount cleanly and exit.")])
        .control("TP", [])
        .text([bold("SIGHUP")])
        .text([roman(
            "Reopen the --log file (for logrotate; the package's /etc/logrotate.d/chironfs \
             does this).",
        )])
        .control("SH", ["EXIT STATUS"])
        .text([roman(
            "0 once mounted (or, in the foreground, after a clean unmount); 2 for a malformed \
             command line; 1 for any other reason nothing was mounted, with a one-line \
             explanation on standard error.",
        )])
        .control("SH", ["FILES"])
        .control("TP", [])
        .text([italic("/run/chironfs/NAME.status")])
        .text([roman(
            "Status file, rewritten every second while mounted (NAME: the mount point with '/' \
             turned into '-').",
        )])
        .control("TP", [])
        .text([italic("/run/chironfs/NAME.sock")])
        .text([roman("Control socket, used by chironctl (root only).")])
        .control("TP", [])
        .text([italic("/etc/chironfs/")])
        .text([roman(
            "Configuration of the chironfs@NAME.service instances (example.conf is an \
             annotated example).",
        )])
        .control("TP", [])
        .text([italic("/var/log/chironfs/")])
        .text([roman(
            "Conventional place for --log files; rotated by logrotate.",
        )])
        .control("SH", ["EXAMPLES"])
        .text([roman(
            "Mount two replicas, one of them read only as a last resort:",
        )])
        .control("PP", [])
        .control("RS", ["4"])
        .control("nf", [])
        .text([roman("chironfs -o allow_other /srv/a=:/mnt/nfs/b /data")])
        .control("fi", [])
        .control("RE", [])
        .control("PP", [])
        .text([roman("The same from /etc/fstab:")])
        .control("PP", [])
        .control("RS", ["4"])
        .control("nf", [])
        .text([roman(
            "/srv/a=:/mnt/nfs/b  /data  fuse.chironfs  \
             allow_other,log=/var/log/chironfs/data.log  0 0",
        )])
        .control("fi", [])
        .control("RE", [])
        .control("PP", [])
        .text([roman("Unmount:")])
        .control("PP", [])
        .control("RS", ["4"])
        .control("nf", [])
        .text([roman("umount /data")])
        .control("fi", [])
        .control("RE", []);
    out.extend(r.render().into_bytes());
    part(&mut out, |w| man.render_version_section(w));
    out.extend(
        see_also(&[
            ("chironctl", "8"),
            ("ocf_chiron_chironfs", "7"),
            ("mount.fuse3", "8"),
            ("fstab", "5"),
        ])
        .into_bytes(),
    );
    out
}

/// A section from help text: blank lines separate paragraphs; indented lines are kept as
/// they are (lists and examples); other lines are filled.
fn preformatted_section(title: &str, text: &str) -> String {
    let mut r = Roff::new();
    r.control("SH", [title]);
    let mut in_nf = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            if in_nf {
                r.control("fi", []).control("RE", []);
                in_nf = false;
            }
            r.control("PP", []);
        } else if line.starts_with(' ') {
            if !in_nf {
                r.control("RS", ["2"]).control("nf", []);
                in_nf = true;
            }
            // Help text indents its lists by two spaces; deeper indentation is kept.
            r.text([roman(line.strip_prefix("  ").unwrap_or(line))]);
        } else {
            if in_nf {
                r.control("fi", []).control("RE", []);
                in_nf = false;
            }
            r.text([roman(line)]);
        }
    }
    if in_nf {
        r.control("fi", []).control("RE", []);
    }
    r.render()
}

fn see_also(pages: &[(&str, &str)]) -> String {
    let mut r = Roff::new();
    r.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, (name, sec)) in pages.iter().enumerate() {
        line.push(bold(*name));
        let sep = if i + 1 < pages.len() { ", " } else { "" };
        line.push(roman(format!("({sec}){sep}")));
    }
    r.text(line);
    r.render()
}

fn chironctl_page(meta: &Meta) -> Vec<u8> {
    let cmd = chironfs::control::cli::command();
    let mut built = cmd.clone();
    built.build();
    let man = man_of(cmd, "8", meta);
    let mut out = Vec::new();
    part(&mut out, |w| man.render_title(w));
    part(&mut out, |w| man.render_name_section(w));
    part(&mut out, |w| man.render_synopsis_section(w));
    part(&mut out, |w| man.render_description_section(w));
    let mut r = Roff::new();
    r.control("PP", []).text([roman(
        "chironctl talks to one chironfs daemon through its control socket (root only). The \
         daemon is chosen with -s or -m; without either, the only socket in /run/chironfs is \
         used. The check command can instead read the status file, which needs no root, so \
         that a monitoring system's unprivileged user can run it.",
    )]);
    out.extend(r.render().into_bytes());
    part(&mut out, |w| man.render_options_section(w));

    let mut r = Roff::new();
    r.control("SH", ["COMMANDS"]);
    for sub in built.get_subcommands().filter(|s| !s.is_hide_set()) {
        let args: Vec<&Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set() && !is_builtin(a))
            .collect();
        let mut head = vec![bold(format!("chironctl {}", sub.get_name()))];
        for a in &args {
            head.push(roman(" "));
            head.extend(synopsis_of(a));
        }
        r.control("TP", []).text(head);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            r.text([roman(about.to_string())]);
        }
        if !args.is_empty() {
            r.control("RS", []);
            for a in &args {
                r.control("TP", []).text(arg_header(a));
                let mut help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let defaults: Vec<String> = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                if !defaults.is_empty() && takes_value(a) {
                    help.push_str(&format!(" [default: {}]", defaults.join(",")));
                }
                r.text([roman(help)]);
            }
            r.control("RE", []);
        }
    }
    r.control("SH", ["EXIT STATUS"])
        .text([roman(
            "0 on success, 1 on any error (one line on standard error). The check command \
             follows the Nagios plugin convention instead: 0 OK (every replica in service), \
             1 WARNING (degraded: some replicas out of service), 2 CRITICAL (no replica in \
             service), 3 UNKNOWN (the daemon cannot be reached, its status file is stale, or \
             the command line is wrong).",
        )])
        .control("SH", ["FILES"])
        .control("TP", [])
        .text([italic("/run/chironfs/NAME.sock")])
        .text([roman(
            "Control socket of the mount at /NAME with '-' for '/' (/mnt/data: mnt-data.sock).",
        )])
        .control("TP", [])
        .text([italic("/run/chironfs/NAME.status")])
        .text([roman(
            "Status file of the same mount, rewritten every second.",
        )])
        .control("TP", [])
        .text([italic("/usr/lib/nagios/plugins/check_chironfs")])
        .text([roman("Nagios plugin wrapping chironctl check.")])
        .control("SH", ["EXAMPLES"])
        .control("RS", ["4"])
        .control("nf", [])
        .text([roman("chironctl -m /data status")])
        .text([roman("chironctl -m /data disable 1")])
        .text([roman("chironctl -m /data enable /mnt/nfs/b")])
        .text([roman(
            "chironctl check --status-file /run/chironfs/data.status",
        )])
        .control("fi", [])
        .control("RE", []);
    out.extend(r.render().into_bytes());
    part(&mut out, |w| man.render_version_section(w));
    out.extend(see_also(&[("chironfs", "8"), ("ocf_chiron_chironfs", "7")]).into_bytes());
    out
}

fn is_builtin(a: &Arg) -> bool {
    matches!(a.get_action(), ArgAction::Help | ArgAction::Version)
}

fn takes_value(a: &Arg) -> bool {
    a.get_num_args().is_some_and(|n| n.takes_values())
}

fn value_name(a: &Arg) -> String {
    a.get_value_names()
        .and_then(|v| v.first().map(|s| s.to_string()))
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase())
}

/// `[--json]`, `REPLICA`, `[--max-age SECS]` for a subcommand's synopsis line.
fn synopsis_of(a: &Arg) -> Vec<roff::Inline> {
    if a.is_positional() {
        return vec![italic(value_name(a))];
    }
    let mut v = vec![roman("[")];
    v.push(bold(flag_name(a)));
    if takes_value(a) {
        v.push(roman(" "));
        v.push(italic(value_name(a)));
    }
    v.push(roman("]"));
    v
}

fn flag_name(a: &Arg) -> String {
    match (a.get_long(), a.get_short()) {
        (Some(l), _) => format!("--{l}"),
        (None, Some(s)) => format!("-{s}"),
        _ => a.get_id().to_string(),
    }
}

fn arg_header(a: &Arg) -> Vec<roff::Inline> {
    if a.is_positional() {
        return vec![italic(value_name(a))];
    }
    let mut v = Vec::new();
    if let Some(s) = a.get_short() {
        v.push(bold(format!("-{s}")));
        if a.get_long().is_some() {
            v.push(roman(", "));
        }
    }
    if let Some(l) = a.get_long() {
        v.push(bold(format!("--{l}")));
    }
    if takes_value(a) {
        v.push(roman(" "));
        v.push(italic(value_name(a)));
    }
    v
}

/// Runs `AGENT meta-data` (with sh, so a non-executable checkout works too).
fn agent_meta_data(agent: &Path) -> Result<String, String> {
    let out = Process::new("sh")
        .arg(agent)
        .arg("meta-data")
        .output()
        .map_err(|e| format!("cannot run {} meta-data: {e}", agent.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} meta-data failed ({}): {}",
            agent.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{} meta-data: {e}", agent.display()))
}

/// Text of a child element, or "".
fn child_text(node: roxmltree::Node, tag: &str) -> String {
    node.children()
        .find(|c| c.has_tag_name(tag))
        .and_then(|c| c.text())
        .unwrap_or("")
        .to_string()
}

/// Paragraphs of a `longdesc`: blank lines separate them, other whitespace is folded.
fn paragraphs(r: &mut Roff, text: &str) {
    let mut first = true;
    for para in text.split("\n\n") {
        let folded = para.split_whitespace().collect::<Vec<_>>().join(" ");
        if folded.is_empty() {
            continue;
        }
        if !first {
            r.control("PP", []);
        }
        first = false;
        r.text([roman(folded)]);
    }
}

/// ocf_chiron_chironfs(7) from the agent's meta-data, laid out like resource-agents' pages.
fn ocf_page(meta: &Meta, xml: &str) -> Result<Vec<u8>, String> {
    // OCF meta-data always starts with `<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">`.
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, opts).map_err(|e| e.to_string())?;
    let ra = doc.root_element();
    if !ra.has_tag_name("resource-agent") {
        return Err("the root element is not <resource-agent>".into());
    }
    let name = ra.attribute("name").unwrap_or("chironfs");
    // OCF 1.1: <version> is the OCF API version, the agent's own is an attribute.
    let agent_version = ra.attribute("version").unwrap_or("unknown");
    let api_version = child_text(ra, "version");
    let page = format!("ocf_chiron_{name}");
    let params: Vec<roxmltree::Node> = ra
        .children()
        .find(|c| c.has_tag_name("parameters"))
        .map(|p| {
            p.children()
                .filter(|c| c.has_tag_name("parameter"))
                .collect()
        })
        .unwrap_or_default();
    let actions: Vec<roxmltree::Node> = ra
        .children()
        .find(|c| c.has_tag_name("actions"))
        .map(|p| p.children().filter(|c| c.has_tag_name("action")).collect())
        .unwrap_or_default();

    let mut r = Roff::new();
    r.control(
        "TH",
        [
            page.to_uppercase().as_str(),
            "7",
            meta.date.as_str(),
            &format!("chironfs {}", meta.version),
            "OCF resource agents",
        ],
    );
    r.control("SH", ["NAME"]).text([roman(format!(
        "{page} - {}",
        child_text(ra, "shortdesc").trim()
    ))]);

    let mut action_names: Vec<&str> = Vec::new();
    for a in &actions {
        if let Some(n) = a.attribute("name")
            && !action_names.contains(&n)
        {
            action_names.push(n);
        }
    }
    r.control("SH", ["SYNOPSIS"]).text([
        bold(name),
        roman(format!(" [{}]", action_names.join(" | "))),
    ]);
    r.control("SH", ["DESCRIPTION"]);
    paragraphs(&mut r, &child_text(ra, "longdesc"));
    r.control("PP", []).text([roman(format!(
        "The agent is installed as /usr/lib/ocf/resource.d/chiron/{name} and is named \
         ocf:chiron:{name} in the cluster configuration. Agent version: {agent_version} (OCF \
         resource agent API {api_version})."
    ))]);

    r.control("SH", ["SUPPORTED PARAMETERS"]);
    for p in &params {
        let pname = p.attribute("name").unwrap_or("?");
        let content = p.children().find(|c| c.has_tag_name("content"));
        let ty = content
            .and_then(|c| c.attribute("type"))
            .unwrap_or("string");
        let default = content.and_then(|c| c.attribute("default")).unwrap_or("");
        let required = p.attribute("required") == Some("1");
        let unique = p.attribute("unique") == Some("1");
        let mut attrs = vec![if required { "required" } else { "optional" }.to_string()];
        if let Some(group) = p.attribute("unique-group") {
            attrs.push(format!("unique group {group}"));
        } else if unique {
            attrs.push("unique".into());
        }
        if p.attribute("reloadable") == Some("1") {
            attrs.push("reloadable".into());
        }
        attrs.push(ty.to_string());
        if default.is_empty() {
            attrs.push("no default".into());
        } else {
            attrs.push(format!("default \"{default}\""));
        }
        r.control("TP", [])
            .text([bold(pname), roman(format!(" ({})", attrs.join(", ")))]);
        let short = child_text(*p, "shortdesc");
        let short = short.trim();
        if !short.is_empty() {
            r.text([italic(format!("{short}.")), roman(" ")]);
        }
        paragraphs(&mut r, &child_text(*p, "longdesc"));
    }

    r.control("SH", ["SUPPORTED ACTIONS"]).text([roman(
        "The agent supports the following actions, with these default timeouts (and \
         intervals and depths for monitor):",
    )]);
    r.control("PP", []).control("RS", ["4"]).control("nf", []);
    for a in &actions {
        let mut line = vec![bold(a.attribute("name").unwrap_or("?").to_string())];
        for key in ["timeout", "interval", "depth", "role"] {
            if let Some(v) = a.attribute(key) {
                line.push(roman(format!("  {key}={v}")));
            }
        }
        r.text(line);
    }
    r.control("fi", []).control("RE", []);

    let example: Vec<String> = params
        .iter()
        .filter(|p| {
            p.attribute("required") == Some("1") || p.attribute("name") == Some("mountpoint")
        })
        .map(|p| {
            let n = p.attribute("name").unwrap_or("?");
            let v = match n {
                "replicas" => "/srv/mars=/srv/venus".to_string(),
                "mountpoint" => "/chironfs".to_string(),
                _ => p
                    .children()
                    .find(|c| c.has_tag_name("content"))
                    .and_then(|c| c.attribute("default"))
                    .filter(|d| !d.is_empty())
                    .unwrap_or("VALUE")
                    .to_string(),
            };
            format!("{n}={v}")
        })
        .collect();
    let monitors: Vec<String> = actions
        .iter()
        .filter(|a| a.attribute("name") == Some("monitor"))
        .filter_map(|a| {
            let interval = a.attribute("interval")?;
            let timeout = a.attribute("timeout").unwrap_or("20s");
            let depth = a.attribute("depth").unwrap_or("0");
            Some(if depth == "0" {
                format!("op monitor interval={interval} timeout={timeout}")
            } else {
                format!("op monitor interval={interval} timeout={timeout} OCF_CHECK_LEVEL={depth}")
            })
        })
        .collect();
    r.control("SH", ["EXAMPLE CRM SHELL"])
        .text([roman(
            "The following is an example configuration for this resource agent using the \
             crm(8) shell:",
        )])
        .control("PP", [])
        .control("RS", ["4"])
        .control("nf", [])
        .text([roman(format!("primitive p_{name} ocf:chiron:{name} \\"))])
        .text([roman(format!("  params {} \\", example.join(" ")))]);
    for (i, m) in monitors.iter().enumerate() {
        let cont = if i + 1 < monitors.len() { " \\" } else { "" };
        r.text([roman(format!("  {m}{cont}"))]);
    }
    r.control("fi", []).control("RE", []);
    r.control("SH", ["EXAMPLE PCS"])
        .text([roman(
            "The following is an example configuration for this resource agent using pcs:",
        )])
        .control("PP", [])
        .control("RS", ["4"])
        .control("nf", [])
        .text([roman(format!(
            "pcs resource create p_{name} ocf:chiron:{name} {} \
             op monitor OCF_CHECK_LEVEL=0 timeout=20s interval=10s",
            example.join(" ")
        ))])
        .control("fi", [])
        .control("RE", []);
    let mut out = r.render();
    out.push_str(&see_also(&[
        ("chironfs", "8"),
        ("chironctl", "8"),
        ("crm", "8"),
        ("ocf-tester", "8"),
    ]));
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_mention_every_option() {
        let meta = Meta {
            date: "2024-01-01".into(),
            version: "0".into(),
        };
        let page = String::from_utf8(chironfs_page(&meta)).unwrap();
        for flag in [
            "foreground",
            "fuseoptions",
            "status\\-file",
            "syslog\\-socket",
            "fstab",
        ] {
            assert!(page.contains(flag), "{flag} missing from chironfs.8");
        }
        let page = String::from_utf8(chironctl_page(&meta)).unwrap();
        for word in ["chironctl status", "chironctl check", "max\\-age", "force"] {
            assert!(page.contains(word), "{word} missing from chironctl.8");
        }
    }

    #[test]
    fn ocf_page_lists_parameters_and_actions() {
        let xml = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd" [
<!ATTLIST parameter unique-group CDATA #IMPLIED reloadable (1|0) #IMPLIED>
]>
<resource-agent name="chironfs" version="0.1.0"><version>1.1</version>
<longdesc lang="en">Long
text.

Second.</longdesc><shortdesc lang="en">Manages X</shortdesc>
<parameters>
<parameter name="replicas" unique-group="replicas" unique="1" required="1"><longdesc lang="en">R</longdesc>
<shortdesc lang="en">replicas</shortdesc><content type="string" default="" /></parameter>
<parameter name="force_unmount" reloadable="1"><longdesc lang="en">F</longdesc>
<shortdesc lang="en">f</shortdesc><content type="string" default="true" /></parameter>
</parameters>
<actions><action name="start" timeout="60s" />
<action name="monitor" depth="0" timeout="20s" interval="10s" /></actions>
</resource-agent>"#;
        let meta = Meta {
            date: "2024-01-01".into(),
            version: "0".into(),
        };
        let page = String::from_utf8(ocf_page(&meta, xml).unwrap()).unwrap();
        assert!(page.contains("ocf_chiron_chironfs \\- Manages X"), "{page}");
        assert!(page.contains("replicas"));
        assert!(page.contains("default \\(dqtrue\\(dq") || page.contains("default \"true\""));
        assert!(page.contains("interval=10s"));
        assert!(page.contains("unique group replicas"), "{page}");
        assert!(page.contains("Agent version: 0.1.0 (OCF"), "{page}");
        assert!(page.contains("reloadable"), "{page}");
        assert!(page.contains("Second."));
    }
}
