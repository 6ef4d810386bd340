//! An order system's use of the submit options: a command submitted in the
//! host's own transaction, an idempotency key, a delayed start, and a
//! command type that retries transient errors (docs/guide.md, §3).
//!
//! ```text
//! cargo run --example orders                      # embedded throwaway PostgreSQL
//! cargo run --example orders -- --database-url postgres://user@host/db
//! ```
//!
//! Its rows are of command types 501 (`ShipOrder`) and 502 (`SendReminder`);
//! it keeps its orders in a table `orders` in the coordinator's schema.

use std::time::{Duration, Instant};

use chrono::Utc;
use command_coordinator::embedded::{EmbeddedOptions, EmbeddedPostgres};
use command_coordinator::{
    Command, CommandContext, CommandError, Coordinator, DatabaseConfig, PgStore, PollOutcome,
    RetryPolicy, SubmitInTransaction, SubmitOptions, migrate,
};
use serde::{Deserialize, Serialize};

/// Books a shipment with a carrier whose API is busy now and then: a 503
/// is worth another try, so the type retries transient errors.
#[derive(Serialize, Deserialize)]
struct ShipOrder {
    order: i64,
    /// Calls made to the carrier so far (persisted with every try).
    #[serde(default)]
    calls: u32,
}

impl Command for ShipOrder {
    const COMMAND_TYPE: i32 = 501;
    // 5 tries, 200 ms then 400 ms, 800 ms... (each in its upper half, at random).
    const RETRY: RetryPolicy = RetryPolicy::exponential(5)
        .initial_backoff(Duration::from_millis(200))
        .max_backoff(Duration::from_secs(10));
    type Output = String; // the tracking number

    async fn execute(&mut self, ctx: &CommandContext) -> Result<(), CommandError> {
        self.calls += 1;
        if self.calls <= 2 {
            println!(
                "  ship order {}: carrier answered 503 (try {})",
                self.order, self.calls
            );
            return Err(CommandError::transient("carrier: 503 service unavailable"));
        }
        println!(
            "  ship order {}: booked (try {}), command {}",
            self.order,
            self.calls,
            ctx.id()
        );
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<String>, CommandError> {
        Ok(PollOutcome::Succeeded(format!("TRK-{:06}", self.order)))
    }
}

/// Reminds the customer to pay, some time after the order.
#[derive(Serialize, Deserialize)]
struct SendReminder {
    order: i64,
}

impl Command for SendReminder {
    const COMMAND_TYPE: i32 = 502;
    type Output = ();

    async fn execute(&mut self, _ctx: &CommandContext) -> Result<(), CommandError> {
        println!(
            "  reminder for order {} sent at {}",
            self.order,
            Utc::now().format("%T%.3f")
        );
        Ok(())
    }

    async fn poll(&mut self, _ctx: &CommandContext) -> Result<PollOutcome<()>, CommandError> {
        Ok(PollOutcome::Succeeded(()))
    }
}

#[actix::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orders: {}", command_coordinator::error_chain(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--database-url" => url = Some(args.next().ok_or("--database-url needs a value")?),
            "-h" | "--help" => {
                println!("usage: orders [--database-url URL]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    let mut embedded = None;
    let url = match url {
        Some(url) => url,
        None => {
            let pg = EmbeddedPostgres::start(EmbeddedOptions::default())?;
            println!("started a throwaway PostgreSQL at {}", pg.url());
            embedded.insert(pg).url()
        }
    };
    let config = DatabaseConfig::from_url(&url)?;
    let pool = config.create_pool()?;
    migrate(&pool, config.schema()).await?;
    let orders = format!("{}.orders", config.schema().quoted());
    pool.get()
        .await?
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {orders} (id bigserial PRIMARY KEY, item text NOT NULL)"
        ))
        .await?;
    // Notifications: a command committed in a host's transaction starts as
    // soon as the commit's notice arrives (without: at the next host check).
    let store = PgStore::new(pool.clone(), config.schema().clone()).with_notifications(&config);
    let coordinator = Coordinator::builder(store)
        .register::<ShipOrder>()
        .register::<SendReminder>()
        .start()
        .await?;

    // 1. The order and its shipment commit together.
    println!("1. an order and its shipment, in one transaction");
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let order: i64 = tx
        .query_one(
            &format!("INSERT INTO {orders} (item) VALUES ('a book') RETURNING id"),
            &[],
        )
        .await?
        .get(0);
    let key = format!("ship-order-{order}-{}", uuid::Uuid::new_v4().simple());
    let ship = coordinator
        .submit_in_with(
            &tx,
            ShipOrder { order, calls: 0 },
            SubmitOptions::new().key(key.clone()),
        )
        .await?;
    let committed = Instant::now();
    tx.commit().await?;
    let shipped = coordinator.wait_for(ship.id).await?.decode::<String>()?;
    println!(
        "  order {order} shipped: {:?}, {:?} after the commit",
        shipped.output,
        committed.elapsed()
    );

    // 2. The same key again (a client retrying after a timeout): no second shipment.
    println!("2. the same idempotency key again");
    let again = coordinator
        .submit_with(ShipOrder { order, calls: 0 }, SubmitOptions::new().key(key))
        .await?;
    println!(
        "  same command: {}, duplicate: {}",
        again.id == ship.id,
        again.duplicate
    );

    // 3. A rolled-back order leaves no command behind.
    println!("3. an order rolled back");
    let tx = client.transaction().await?;
    let doomed: i64 = tx
        .query_one(
            &format!("INSERT INTO {orders} (item) VALUES ('a lamp') RETURNING id"),
            &[],
        )
        .await?
        .get(0);
    let never = coordinator
        .submit_in(
            &tx,
            ShipOrder {
                order: doomed,
                calls: 0,
            },
        )
        .await?;
    tx.rollback().await?;
    println!(
        "  its command exists: {}",
        coordinator.get(never.id).await?.is_some()
    );

    // 4. A reminder two seconds later: persisted now, started then.
    println!("4. a reminder, two seconds from now");
    let at = Utc::now() + chrono::Duration::seconds(2);
    println!("  due at {}", at.format("%T%.3f"));
    let reminder = coordinator.submit_at(at, SendReminder { order }).await?;
    coordinator.wait_for(reminder).await?;

    coordinator.shutdown().await;
    Ok(())
}
