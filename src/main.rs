//! The `warren` binary: parse arguments, start logging, run, report.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = warren::cli::Cli::from_command_line();
    warren::logging::init(cli.verbose);
    match warren::cli::run(cli) {
        Ok(code) => code,
        // Whoever read our output stopped (`warren stats | head`): nothing
        // is wrong, and there is no one left to tell.
        Err(error) if closed_stdout(&error) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

/// Whether `error` is a write to a pipe whose reader is gone (written
/// directly, or by serde_json).
fn closed_stdout(error: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(BrokenPipe))
    })
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
