//! Every command that opens the SQLite store closes it on its way out: the log and its read
//! models are left whole in `ticketd.db` and `ticketd.views.db`, with no `-wal` file beside
//! them (what docs/ARCHITECTURE.md's "Shutdown" and the README's back-up advice rely on).

mod common;

use std::path::Path;

use common::{text, ticketd};

/// The `-wal` files in `dir`.
fn wal_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with("-wal"))
        .collect()
}

#[test]
fn each_command_leaves_the_sqlite_files_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let export = dir.path().join("export.ndjson");
    let export = export.to_str().expect("utf-8 path");
    for args in [
        vec!["migrate"],
        vec!["rebuild"],
        vec!["verify"],
        vec!["export", "--output", export],
    ] {
        let out = ticketd(dir.path(), &args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(wal_files(&data), Vec::<String>::new(), "after {args:?}");
    }
    let into = dir.path().join("imported");
    let out = ticketd(
        dir.path(),
        &[
            "import",
            "--data-dir",
            into.to_str().expect("utf-8 path"),
            export,
        ],
    );
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    assert!(into.join("ticketd.db").exists());
    assert_eq!(wal_files(&into), Vec::<String>::new(), "after import");
}
