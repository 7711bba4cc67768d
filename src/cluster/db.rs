//! The connection to PostgreSQL: one session at a time per role (the writer's, and one shared
//! by everything else), each with its statements prepared once, reconnected on demand; and
//! the schema, applied at start under an advisory lock from versioned migrations shipped in
//! the binary.
//!
//! tokio-postgres pipelines: every query on one `Client` goes out without waiting for the
//! answers before it, so one session serves many concurrent readers over one socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Statement};

/// How long a connection attempt may take (a `connect_timeout` in the URL overrides it).
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Longest a statement may take before its outcome is treated as unknown and its connection
/// dropped (a hung server, a lost network): the caller re-reads what it wrote.
pub const STATEMENT_TIMEOUT_MS: u64 = 5_000;
/// Key of the advisory lock that serialises migrations between instances starting together.
const MIGRATION_LOCK: i64 = 0x7061_7967_6174_6501; // "paygate\x01"

/// The schema, one entry per version, applied in order; never edit a shipped entry, add one.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "
    CREATE SEQUENCE paygate_epochs;
    -- One row per live instance incarnation. Every write of a payment joins its owner's row
    -- (FOR KEY SHARE), so a takeover, which deletes an expired row, waits for writes in flight
    -- and refuses every later one.
    CREATE TABLE paygate_leases (
        epoch      bigint PRIMARY KEY,
        owner      text NOT NULL,
        expires_at timestamptz NOT NULL,
        purge_ack  bigint NOT NULL DEFAULT 0
    );
    -- status: 0 pending, 1 sent to `processor` at `requested_at` (outcome unknown until
    -- settled), 2 processed there at `requested_at`. Times are Unix milliseconds.
    CREATE TABLE paygate_payments (
        id           uuid PRIMARY KEY,
        cents        bigint NOT NULL CHECK (cents > 0),
        accepted_at  bigint NOT NULL,
        status       smallint NOT NULL CHECK (status IN (0, 1, 2)),
        processor    text,
        requested_at bigint,
        owner        text NOT NULL,
        epoch        bigint NOT NULL
    );
    CREATE INDEX paygate_payments_unsettled ON paygate_payments (epoch) WHERE status < 2;
    CREATE INDEX paygate_payments_processed ON paygate_payments (requested_at) INCLUDE (processor, cents)
        WHERE status = 2;
    -- One row per processor: whoever moves checked_at forward calls its health endpoint and
    -- publishes the answer for every instance's router.
    CREATE TABLE paygate_health (
        processor       text PRIMARY KEY,
        checked_at      timestamptz NOT NULL DEFAULT '-infinity',
        checker         text,
        failing         boolean,
        min_response_ms bigint,
        reported_at     timestamptz
    );
    CREATE TABLE paygate_cluster (
        one             boolean PRIMARY KEY DEFAULT true CHECK (one),
        purge_requested bigint NOT NULL DEFAULT 0,
        purge_done      bigint NOT NULL DEFAULT 0
    );
    INSERT INTO paygate_cluster DEFAULT VALUES;
    ",
)];

/// The lease row of this session's instance, locked against a takeover for the statement.
const LEASE: &str = "l AS (SELECT epoch FROM paygate_leases WHERE epoch = $2 AND owner = $1 AND expires_at > now() FOR KEY SHARE)";

/// One statement that accepts, records intents and settles a batch in one commit.
/// $1 owner, $2 epoch; accepts $3..$7; intents $8..$10; settles $11..$15.
/// Answers one row per accept (kind 0: inserted, or the cents of the row already there), per
/// intent and settle that took (kinds 1, 2), and one kind-3 row: whether the lease held.
fn write_sql() -> String {
    format!(
        "WITH {LEASE},
        a AS (SELECT * FROM unnest($3::uuid[], $4::int8[], $5::int8[], $6::text[], $7::int8[])
              AS t(id, cents, accepted_at, processor, requested_at)),
        ins AS (INSERT INTO paygate_payments (id, cents, accepted_at, status, processor, requested_at, owner, epoch)
                SELECT a.id, a.cents, a.accepted_at, CASE WHEN a.processor IS NULL THEN 0 ELSE 1 END,
                       a.processor, a.requested_at, $1, l.epoch FROM a, l
                ON CONFLICT (id) DO NOTHING RETURNING id),
        i AS (UPDATE paygate_payments p SET status = 1, processor = x.processor, requested_at = x.requested_at
              FROM unnest($8::uuid[], $9::text[], $10::int8[]) AS x(id, processor, requested_at), l
              WHERE p.id = x.id AND p.epoch = l.epoch AND p.status = 0 RETURNING p.id),
        s AS (UPDATE paygate_payments p SET status = x.status,
                     processor = CASE WHEN x.status = 2 THEN p.processor END,
                     requested_at = CASE WHEN x.status = 2 THEN x.at END
              FROM unnest($11::uuid[], $12::int2[], $13::int8[], $14::text[], $15::int8[]) AS x(id, status, at, sent_to, sent_at), l
              WHERE p.id = x.id AND p.epoch = l.epoch AND p.status = 1 AND p.processor = x.sent_to
                AND p.requested_at = x.sent_at RETURNING p.id)
        SELECT 0::int2, a.id, ins.id IS NOT NULL, p.cents FROM a LEFT JOIN ins ON ins.id = a.id
               LEFT JOIN paygate_payments p ON p.id = a.id AND ins.id IS NULL
        UNION ALL SELECT 1::int2, id, true, NULL::int8 FROM i
        UNION ALL SELECT 2::int2, id, true, NULL::int8 FROM s
        UNION ALL SELECT 3::int2, NULL::uuid, EXISTS (SELECT 1 FROM l), NULL::int8"
    )
}

/// Renews this instance's lease and reads what the cluster needs from it: the purge counters
/// and whether any lease expired or any unsettled payment has no live owner.
const HEARTBEAT_SQL: &str = "UPDATE paygate_leases SET expires_at = now() + $3::int8 * interval '1 millisecond'
     WHERE epoch = $2 AND owner = $1 AND expires_at > now()
     RETURNING (SELECT purge_requested FROM paygate_cluster), (SELECT purge_done FROM paygate_cluster),
       EXISTS (SELECT 1 FROM paygate_leases WHERE expires_at < now())
       OR EXISTS (SELECT 1 FROM paygate_payments p WHERE p.status < 2
                  AND NOT EXISTS (SELECT 1 FROM paygate_leases x WHERE x.epoch = p.epoch))";

/// Takes up to $3 unsettled payments with no live owner, for this instance's epoch.
fn takeover_sql() -> String {
    format!(
        "WITH {LEASE},
        c AS (SELECT p.id FROM paygate_payments p WHERE p.status < 2
              AND NOT EXISTS (SELECT 1 FROM paygate_leases x WHERE x.epoch = p.epoch)
              LIMIT $3 FOR UPDATE OF p SKIP LOCKED)
        UPDATE paygate_payments p SET owner = $1, epoch = l.epoch FROM c, l WHERE p.id = c.id
        RETURNING p.id, p.cents, p.accepted_at, p.status, p.processor, p.requested_at"
    )
}

/// Every statement a session uses, prepared when it connects.
pub struct Statements {
    pub write: Statement,
    pub heartbeat: Statement,
    pub expire: Statement,
    pub takeover: Statement,
    pub get: Statement,
    pub reread: Statement,
    pub summary: Statement,
    pub health_read: Statement,
    pub health_claim: Statement,
    pub health_report: Statement,
    pub purge_ack: Statement,
    pub register: Statement,
    pub purge_request: Statement,
    pub purge_ready: Statement,
    pub unsettled_mine: Statement,
}

impl Statements {
    async fn prepare(c: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            write: c.prepare(&write_sql()).await?,
            heartbeat: c.prepare(HEARTBEAT_SQL).await?,
            expire: c.prepare("DELETE FROM paygate_leases WHERE expires_at < now() RETURNING epoch, owner").await?,
            takeover: c.prepare(&takeover_sql()).await?,
            get: c.prepare("SELECT cents, accepted_at, status, processor, requested_at FROM paygate_payments WHERE id = $1").await?,
            reread: c
                .prepare(
                    "SELECT id, cents, status, processor, requested_at, epoch, accepted_at FROM paygate_payments
                     WHERE id = ANY($1::uuid[])",
                )
                .await?,
            summary: c
                .prepare(
                    "SELECT processor, count(*)::int8, sum(cents)::text FROM paygate_payments
                     WHERE status = 2 AND requested_at >= $1 AND requested_at <= $2 GROUP BY processor",
                )
                .await?,
            health_read: c
                .prepare(
                    "SELECT processor, failing, min_response_ms, (extract(epoch FROM reported_at) * 1000)::int8,
                            checked_at <= now() - $1::int8 * interval '1 millisecond'
                     FROM paygate_health WHERE processor = ANY($2::text[])",
                )
                .await?,
            health_claim: c
                .prepare(
                    "UPDATE paygate_health SET checked_at = now(), checker = $2
                     WHERE processor = $1 AND checked_at <= now() - $3::int8 * interval '1 millisecond' RETURNING 1",
                )
                .await?,
            health_report: c
                .prepare(
                    "UPDATE paygate_health SET failing = coalesce($3, failing), min_response_ms = coalesce($4, min_response_ms),
                            reported_at = CASE WHEN $3::bool IS NULL THEN reported_at ELSE now() END,
                            checked_at = greatest(checked_at, now() + $5::int8 * interval '1 millisecond')
                     WHERE processor = $1 AND checker = $2",
                )
                .await?,
            register: c
                .prepare(
                    "INSERT INTO paygate_leases (epoch, owner, expires_at, purge_ack)
                     SELECT nextval('paygate_epochs'), $1, now() + $2::int8 * interval '1 millisecond', purge_requested
                     FROM paygate_cluster RETURNING epoch, purge_ack, (SELECT purge_done FROM paygate_cluster)",
                )
                .await?,
            purge_request: c.prepare("UPDATE paygate_cluster SET purge_requested = purge_requested + 1 RETURNING purge_requested").await?,
            purge_ready: c.prepare("SELECT NOT EXISTS (SELECT 1 FROM paygate_leases WHERE expires_at > now() AND purge_ack < $1)").await?,
            unsettled_mine: c.prepare("SELECT count(*) FROM paygate_payments WHERE epoch = $1 AND status < 2").await?,
            purge_ack: c.prepare("UPDATE paygate_leases SET purge_ack = greatest(purge_ack, $3) WHERE epoch = $2 AND owner = $1").await?,
        })
    }
}

/// A connected session: the client, its prepared statements and its server process.
pub struct Session {
    pub client: Client,
    pub st: Statements,
    /// The server process serving this session: after a lost answer, the statement it may
    /// still be running must end before anyone reads what it wrote ([`await_ended`]).
    pub pid: i32,
    /// When that process started (with `pid`, it names the process even after a failover
    /// to a server whose pids overlap).
    pub started: String,
}

/// Server-side limit of every statement of ours: a statement whose client vanished ends within
/// this (committed or not) even where its server process cannot be terminated.
pub const SERVER_STATEMENT_TIMEOUT_MS: u64 = 10_000;

/// Waits until server process `pid` (a session whose answer was lost) has ended, terminating it:
/// until then a statement it runs may still commit, and a read could not tell. Gives up waiting
/// once the server's own statement timeout has surely ended the statement.
pub async fn await_ended(s: &Session, pid: i32, started: &str, lost_at: std::time::Instant) -> Result<(), DbError> {
    let bound = Duration::from_millis(SERVER_STATEMENT_TIMEOUT_MS + 2_000);
    loop {
        let alive = timed(s.client.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1::int4 AND backend_start::text = $2::text",
            &[&pid, &started],
        ))
        .await?;
        if alive.is_empty() || lost_at.elapsed() >= bound {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Why a database call failed, as the caller must treat it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// The server answered with an error: the statement did not commit.
    #[error("the database refused the statement: {0}")]
    Refused(String),
    /// No answer (connection lost, timed out): a write may or may not have committed.
    #[error("no answer from the database: {0}")]
    Lost(String),
}

impl DbError {
    pub fn from_pg(e: tokio_postgres::Error) -> DbError {
        match e.code() {
            // A read-only standby or a server shutting down: the next session goes elsewhere.
            Some(code) => DbError::Refused(format!("{} ({})", e, code.code())),
            None => DbError::Lost(e.to_string()),
        }
    }

    /// Whether the session should be dropped and a new one made (a server that became a
    /// standby, one shutting down, or no answer at all).
    pub fn needs_new_session(&self, session: &Session) -> bool {
        session.client.is_closed()
            || match self {
                DbError::Lost(_) => true,
                DbError::Refused(m) => ["(25006)", "(25P02)", "(57P01)", "(57P02)", "(57P03)", "(08"].iter().any(|c| m.contains(c)),
            }
    }
}

/// Runs `fut` under [`STATEMENT_TIMEOUT_MS`]; a timeout is a lost answer.
pub async fn timed<T>(fut: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, DbError> {
    match tokio::time::timeout(Duration::from_millis(STATEMENT_TIMEOUT_MS), fut).await {
        Ok(r) => r.map_err(DbError::from_pg),
        Err(_) => Err(DbError::Lost(format!("no answer within {STATEMENT_TIMEOUT_MS} ms"))),
    }
}

/// A lazily (re)connected session.
pub struct Db {
    config: tokio_postgres::Config,
    role: &'static str,
    session: Mutex<Option<Arc<Session>>>,
    /// Sessions connected now (for the pool-use gauge).
    pub open: Arc<std::sync::atomic::AtomicI64>,
}

impl Db {
    pub fn new(url: &str, role: &'static str, instance: &str, open: Arc<std::sync::atomic::AtomicI64>) -> Result<Db, String> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("--database-url: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS));
        }
        if config.get_application_name().is_none() {
            config.application_name(format!("paygate {instance} {role}"));
        }
        config.keepalives(true).keepalives_idle(Duration::from_secs(10));
        let options = format!("{} -c statement_timeout={SERVER_STATEMENT_TIMEOUT_MS}", config.get_options().unwrap_or_default());
        config.options(options.trim());
        Ok(Db { config, role, session: Mutex::new(None), open })
    }

    /// The current session, connecting a new one when there is none (or it closed).
    pub async fn session(&self) -> Result<Arc<Session>, DbError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.client.is_closed()
        {
            return Ok(s.clone());
        }
        *slot = None;
        let connect = self.config.connect(NoTls);
        let (client, connection) = match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS + 1_000), connect).await {
            Ok(r) => r.map_err(|e| DbError::Lost(format!("connect: {e}")))?,
            Err(_) => return Err(DbError::Lost("connect timed out".into())),
        };
        let open = self.open.clone();
        let role = self.role;
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(role, error = %e, "database connection ended");
            }
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
        let st = timed(Statements::prepare(&client)).await?;
        let me = timed(client.query_one("SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()", &[])).await?;
        let s = Arc::new(Session { client, st, pid: me.get(0), started: me.get(1) });
        *slot = Some(s.clone());
        tracing::info!(role, "database session open");
        Ok(s)
    }

    /// Runs a read (`pick` names one of the prepared statements) on the current session; a
    /// read that lost its session is tried once more on a new one, since it changes nothing.
    pub async fn read(
        &self,
        pick: fn(&Statements) -> &Statement,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        let mut again = true;
        loop {
            let s = self.session().await?;
            match timed(s.client.query(pick(&s.st), params)).await {
                Ok(rows) => return Ok(rows),
                Err(e) if e.needs_new_session(&s) => {
                    self.reset(&s).await;
                    if !std::mem::take(&mut again) {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Drops `session` (if it is still the current one) so that the next call reconnects.
    pub async fn reset(&self, session: &Arc<Session>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            *slot = None;
        }
    }
}

/// Applies every migration the database lacks, in one transaction under an advisory lock, so
/// that instances starting together apply each exactly once.
pub async fn migrate(url: &str) -> Result<i32, String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("--database-url: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS));
    }
    let (mut client, connection) = config.connect(NoTls).await.map_err(|e| format!("cannot connect to the database: {e}"))?;
    let conn = tokio::spawn(connection);
    let err = |e: tokio_postgres::Error| format!("migration failed: {e}");
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS paygate_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(err)?;
    let have: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM paygate_migrations", &[]).await.map_err(err)?.get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if have > known {
        return Err(format!("the database's schema is version {have}, newer than this binary's {known}: upgrade paygate"));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > have) {
        tx.batch_execute(sql).await.map_err(err)?;
        tx.execute("INSERT INTO paygate_migrations (version) VALUES ($1)", &[version]).await.map_err(err)?;
        tracing::info!(version, "database migration applied");
    }
    tx.commit().await.map_err(err)?;
    drop(client);
    let _ = conn.await;
    Ok(known)
}
