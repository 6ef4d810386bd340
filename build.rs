//! Rebuilds the crate when a migration is added to `migrations/`.
//!
//! `refinery::embed_migrations!` reads the directory at compile time, and
//! cargo tracks only the files it included: a new `V<n>__*.sql` alone would
//! leave an incremental build with the old set of migrations.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
