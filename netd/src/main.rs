//! The `netd` binary: the daemon and its command line.

mod cli;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("netd: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
