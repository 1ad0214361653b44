//! `lameduck`: the reference service (`serve`) built on the lameduck library.
//!
//! `lameduck drill`: drives traffic at any service across a shutdown.
//!
//! Exit codes of `serve`: 0 drained cleanly, 1 failed to start or serve, 3
//! drained but had to cut connections (`lameduck::EXIT_FORCED`), 64 bad
//! usage (flags, or an inherited socket environment that does not fit).
//! Of `drill`: 0 nothing lost, 1 the drill could not run, 2 something was
//! lost, 64 bad usage, 130 interrupted by Ctrl-C (after its report).

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod drill;
mod drill_tls;
mod logging;
mod otlp;
mod serve;

/// Exit code for bad usage (sysexits' `EX_USAGE`).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            logging::error_line(format_args!("lameduck: error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<u8> {
    match cli.command {
        cli::Command::Serve(args) => {
            if let Err(why) = args.check() {
                logging::error_line(format_args!("lameduck: error: {why}"));
                return Ok(EXIT_USAGE);
            }
            // Held to the end: it flushes the lines still queued.
            let _log = logging::init(&args.log)?;
            // Before any thread starts: this edits the environment.
            let sockets = match lameduck::handoff::inherited_listeners()
                .map_err(|e| e.to_string())
                .and_then(serve::Sockets::from_inherited)
            {
                Ok(sockets) => sockets,
                Err(err) => {
                    logging::error_line(format_args!("lameduck: error: {err}"));
                    return Ok(EXIT_USAGE);
                }
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let code = runtime.block_on(serve::run(args, sockets));
            // The drain is over: the spans of the last requests go out.
            otlp::flush();
            code
        }
        cli::Command::Drill(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(drill::run(args))
        }
    }
}
