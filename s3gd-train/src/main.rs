//! The `s3gd-train` binary: parses the command line, installs logging, runs the command, and turns
//! an error into one message on stderr and exit status 1 (clap itself exits 2 on bad arguments).

use std::process::ExitCode;

use clap::Parser;
use s3gd_train::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    s3gd_train::progress::init_logging();
    match s3gd_train::run_command(cli.into_command()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
