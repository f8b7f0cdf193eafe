// `sqlx::migrate!` embeds the migration files at compile time; without this, a newly added
// migration would not reach the binary until something else made the crate rebuild.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
