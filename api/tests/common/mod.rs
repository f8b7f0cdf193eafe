//! What the command-line suites share: running the `ticketd` binary as a user would.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `ticketd args…` in `dir`, with no database URL from the environment and quiet logs.
pub fn ticketd(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ticketd"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("TICKETD_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ticketd")
}

/// A command's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
