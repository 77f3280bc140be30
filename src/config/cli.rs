//! The clap command of `chironfs`, built from the options table (`options.rs`) plus the two
//! positionals, `-h` and `-V`, and the help texts; and clap's errors turned into our one-line
//! messages. `config::command()` hands it to `tools/gen-docs` for the man page and the shell
//! completions, so they say what `--help` says.
//!
//! May touch: the options table and the `-o` key tables (to list them in the help); nothing
//! else.

use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, ColorChoice, Command, value_parser};

use super::ConfigError;
use super::mount_opts;
use super::options::OPTIONS;

const ABOUT: &str =
    "ChironFS: a replicating FUSE filesystem. Every change is applied to all replicas;
reads are served by one replica, with fail-over to the others.";

const REPLICAS_HELP: &str = "\
Replicas: PATH=PATH[=PATH...] lists two or more existing directories that hold copies of the
same tree. A ':' before a path gives that replica low read priority: it is read only when no
normal replica can serve. If every replica has ':', all are treated as normal priority.";

const TAIL_HELP: &str = "\
A command-line option wins over the same setting given with -o.

NAME in the default status file and control socket is the mount point with '/' turned into
'-' (/mnt/data -> mnt-data, / -> root).

Example fstab line:
  /srv/a=/srv/b  /mnt/data  fuse.chironfs  allow_other,log=/var/log/chironfs.log  0 0";

/// Help layout: the positionals are optional for clap (so that missing ones get our own
/// message) and hidden, and described here instead, without clap's `[...]` brackets.
const HELP_TEMPLATE: &str = "\
{about-with-newline}
{usage-heading} {usage}

Arguments:
  [:]PATH=[:]PATH[=...]   Replica directories separated by '=' (':' = low read priority)
  MOUNTPOINT              Existing directory to mount the replicated tree on

Options:
{options}{after-help}";

/// The command: positionals are optional so that missing ones get our own one-line message
/// instead of clap's multi-line one.
pub(super) fn command() -> Command {
    let cmd = Command::new("chironfs")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .after_help(after_help())
        .override_usage("chironfs [OPTIONS] [:]PATH=[:]PATH[=[:]PATH...] MOUNTPOINT [OPTIONS]")
        .help_template(HELP_TEMPLATE)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args_override_self(true)
        .color(ColorChoice::Never)
        .arg(
            Arg::new("spec")
                .value_name("[:]PATH=[:]PATH[=...]")
                .hide(true)
                .help("Replica directories separated by '='"),
        )
        .arg(
            Arg::new("mountpoint")
                .value_name("MOUNTPOINT")
                .value_parser(value_parser!(PathBuf))
                .hide(true)
                .help("Directory to mount on"),
        );
    OPTIONS
        .iter()
        .fold(cmd, |cmd, opt| cmd.arg(default_in_help(opt.arg())))
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .short_alias('?')
                .action(ArgAction::Help)
                .help("Print this help and exit"),
        )
        .arg(
            Arg::new("version")
                .short('V')
                .long("version")
                .action(ArgAction::Version)
                .help("Print the version and exit"),
        )
}

/// Ends the help text with the default value, `[default: 5]`, and hides it from clap: clap
/// shows it the same way in `--help`, but the man page would put it in the option's header
/// and the fish completions would drop it.
fn default_in_help(arg: Arg) -> Arg {
    let Some(default) = arg.get_default_values().first() else {
        return arg;
    };
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    let help = format!("{help} [default: {}]", default.to_string_lossy());
    arg.help(help).hide_default_value(true)
}

/// The text after the options: the replica list, then every `-o` key (chironfs's own from
/// the options table, then the kernel's), then the rest.
fn after_help() -> String {
    let own = OPTIONS.iter().filter_map(|opt| {
        let key = opt.mount_key()?;
        let arg = opt.arg();
        Some(
            match arg.get_value_names().and_then(|names| names.first()) {
                Some(value) => format!("{key}={value}"),
                None => key,
            },
        )
    });
    let ignored = mount_opts::IGNORED.iter().copied().chain(["x-..."]);
    format!(
        "{REPLICAS_HELP}\n\nMount options (-o, comma-separated, also usable in fstab):\n{}\n{}\n{}\n\
         {TAIL_HELP}",
        key_lines("chironfs:", own),
        key_lines("kernel:", mount_opts::KERNEL.iter().map(|(key, _)| *key)),
        key_lines("ignored:", ignored),
    )
}

/// `  label     word word ...`, wrapped at 92 columns with the words aligned.
fn key_lines<S: AsRef<str>>(label: &str, words: impl IntoIterator<Item = S>) -> String {
    const WIDTH: usize = 92;
    let indent = " ".repeat(12);
    let mut out = format!("  {label:<10}");
    let mut line_len = out.len();
    for (i, word) in words.into_iter().enumerate() {
        let word = word.as_ref();
        if i > 0 && line_len + 1 + word.len() > WIDTH {
            out.push('\n');
            out.push_str(&indent);
            line_len = indent.len();
        } else if i > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += word.len();
    }
    out
}

/// Turns a clap error into one sentence plus the `--help` hint.
pub(super) fn clap_error(e: &clap::Error) -> ConfigError {
    if e.kind() == ErrorKind::UnknownArgument
        && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
    {
        return if arg.starts_with('-') {
            ConfigError::usage(format!("unknown option '{arg}'"))
        } else {
            ConfigError::usage(format!(
                "unexpected extra argument '{arg}' (only the replica list and the mount point \
                 are expected)"
            ))
        };
    }
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or("invalid command line").trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    ConfigError::usage(line)
}
