fn main() {
    // sqlx::migrate! only tracks the files that exist: a new migration must trigger a rebuild.
    println!("cargo:rerun-if-changed=migrations");
}
