//! `ticketd token` as README.md has a newcomer use it, `TOKEN=$(ticketd token …)`: stdout holds
//! the token alone, on the first run too, which creates the JWT secret and logs that (to
//! stderr); and what the service would refuse is not minted.

mod common;

use std::process::Command;

use common::{text, ticketd};

fn token(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ticketd"))
        .arg("token")
        .args(args)
        .args(["--data-dir", "./data"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("TICKETD_JWT_SECRET")
        .output()
        .expect("run ticketd token")
}

#[test]
fn a_first_token_is_all_that_stdout_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = token(
        dir.path(),
        &["alice", "--role", "customer", "--org", "acme"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.path().join("data/jwt-secret").exists());
    assert!(
        text(&out.stderr).contains("created a new JWT secret"),
        "{}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0].split('.').count(), 3, "a JWT: {stdout}");
}

#[test]
fn a_token_the_service_would_refuse_is_not_minted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let long = "x".repeat(129);
    for args in [
        vec!["", "--role", "agent"],
        vec![long.as_str(), "--role", "agent"],
        vec!["bo\u{7}b", "--role", "agent"],
        vec!["bob", "--role", "customer", "--org", "ac\u{1b}me"],
    ] {
        let out = ticketd(
            dir.path(),
            &[&["token"], args.as_slice(), &["--data-dir", "./data"]].concat(),
        );
        assert!(!out.status.success(), "{args:?} minted");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            text(&out.stderr).contains("The token's"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(
        !dir.path().join("data").exists(),
        "a refused token created nothing"
    );
}
