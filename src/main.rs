//! The `warren` binary: parse arguments, start logging, run, report.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = warren::cli::Cli::from_command_line();
    warren::logging::init(cli.verbose);
    match warren::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

/// `warren: error: …`, one `caused by:` line per source, and a hint.
#[expect(
    clippy::print_stderr,
    reason = "the binary's one place for fatal errors"
)]
fn report(error: &anyhow::Error) {
    eprintln!("warren: error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    eprintln!("  hint: rerun with WARREN_LOG=debug (or -vv) for details");
}
