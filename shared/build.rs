// Migrations are embedded with `refinery::embed_migrations!`; rebuild when a file is added.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
