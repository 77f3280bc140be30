//! `chironfs`: parse the command line, then hand over to the daemon.

use chironfs::config::{self, Action};

fn main() {
    let code = match config::parse_command_line(std::env::args_os()) {
        Ok(Action::Mount(unchecked)) => chironfs::daemon::run(*unchecked),
        Ok(Action::Remount { mountpoint, flags }) => {
            match chironfs::daemon::remount(&mountpoint, &flags) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("chironfs: {e}");
                    1
                }
            }
        }
        Ok(Action::Help(text)) | Ok(Action::Version(text)) => {
            println!("{text}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            if e.is_usage() { 2 } else { 1 }
        }
    };
    std::process::exit(code);
}
