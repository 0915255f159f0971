//! Applies the embedded migrations using the same settings as the functions
//! (`DATABASE_URL`, or `DB_SECRET_ID` with an RDS-format secret).

use shared::platform::command::{self, Command};

#[tokio::main]
async fn main() {
    command::main("migrate", run()).await
}

async fn run() -> anyhow::Result<()> {
    let mut cmd = Command::connect(&[]).await?;
    let applied = shared::platform::db::migrate(&mut cmd.db).await?;
    if applied.is_empty() {
        println!("migrate: schema is up to date");
    } else {
        for m in &applied {
            println!("migrate: applied {m}");
        }
    }
    Ok(())
}
