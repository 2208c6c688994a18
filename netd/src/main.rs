//! The `netd` binary: the daemon and its command line.

mod cli;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print and succeed; a bad argument is an
        // `invalid` refusal like the daemon's.
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            let _ = err.print();
            return std::process::ExitCode::from(netd::error::ErrorKind::Invalid.exit_code());
        }
    };
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The exit status says the kind of refusal (docs/errors.md).
        Err(err) => {
            eprintln!("netd: {err:#}");
            std::process::ExitCode::from(netd::error::kind_of(&err).exit_code())
        }
    }
}
