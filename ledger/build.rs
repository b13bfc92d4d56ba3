// `sqlx::migrate!` embeds migrations/ at build time; rebuild when a migration changes (sqlx docs).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
