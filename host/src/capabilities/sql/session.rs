//! The server session behind a plugin's statement, ended on the server when
//! the host abandons the statement.
//!
//! Closing the connection at the call's deadline stops the host waiting,
//! not the server working: PostgreSQL and MariaDB notice a closed client
//! only when they next write to it. Measured here, a `SELECT pg_sleep(25)`
//! or `SELECT SLEEP(25)` whose client was killed after 1 s was still running
//! 3 s later (MariaDB ends a `SLEEP` within about 5 s, but a `BENCHMARK`
//! runs on, burning a server core). So a plugin whose every call sent
//! `SELECT pg_sleep(86400)` would leave one server session behind per call
//! (each holding a server connection and whatever it locked), until the
//! server's `max_connections` refused every other plugin and tenant of that
//! server.
//!
//! So before each statement the host asks which session it is (one round
//! trip: its pid and start time, or `CONNECTION_ID()`), and a statement
//! abandoned while running (its deadline passed, a limit cut its result, or
//! the call went away) has its session ended from a connection of its own
//! (`pg_terminate_backend`, `KILL CONNECTION`). An account may always end
//! its own sessions, so this needs no right beyond the grant's.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::{MySql, MySqlConnection};
use sqlx::postgres::{PgConnection, Postgres};
use sqlx::{Connection, Database, Executor as _, Row as _};
use tracing::Instrument as _;

/// How long ending an abandoned session may take (connecting included)
/// before the host gives up on it (logged).
const END_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect options of `DB`, as a pool hands them out.
pub(super) type Options<DB> = Arc<<<DB as Database>::Connection as Connection>::Options>;

/// The server-side session of a connection, per database.
pub(super) trait Sessions: Database {
    /// What names one session of the server, for as long as it lives.
    type Session: std::fmt::Display + Send + 'static;

    /// The session `connection` is.
    fn session(
        connection: &mut Self::Connection,
    ) -> impl Future<Output = Result<Self::Session, sqlx::Error>> + Send;

    /// Ends `session` (and what it runs) from a new connection made with
    /// `options`. A session already gone is not an error.
    fn end_session(
        options: Options<Self>,
        session: Self::Session,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'static;
}

/// A PostgreSQL backend. Its pid alone may be reused by a later backend
/// (of another account: the shipped one holds `pg_signal_backend`), so
/// its start time goes with it.
pub(super) struct Backend {
    pid: i32,
    started: String,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "PostgreSQL backend {}", self.pid)
    }
}

impl Sessions for Postgres {
    type Session = Backend;

    async fn session(connection: &mut PgConnection) -> Result<Backend, sqlx::Error> {
        // A query without arguments: the simple protocol, one round trip.
        // The function for this one backend, not the `pg_stat_activity`
        // view, which reads every backend and joins the catalogs: with
        // pgbench on loopback 0.14 ms against 0.38 ms, on every statement.
        let row = connection
            .fetch_one(
                "SELECT pid, backend_start::text FROM pg_stat_get_activity(pg_backend_pid())",
            )
            .await?;
        Ok(Backend {
            pid: row.try_get(0)?,
            started: row.try_get(1)?,
        })
    }

    async fn end_session(options: Options<Self>, backend: Backend) -> Result<(), sqlx::Error> {
        let mut connection = PgConnection::connect_with(&options).await?;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_get_activity($1) \
             WHERE backend_start::text = $2",
        )
        .bind(backend.pid)
        .bind(backend.started)
        .persistent(false)
        .execute(&mut connection)
        .await?;
        connection.close().await
    }
}

/// MariaDB/MySQL's error for a `KILL` of a thread that no longer exists.
const UNKNOWN_THREAD: &str = "1094";

/// A MariaDB/MySQL connection id: the server never reuses one while it
/// runs.
pub(super) struct Thread(u64);

impl std::fmt::Display for Thread {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "MariaDB/MySQL connection {}", self.0)
    }
}

impl Sessions for MySql {
    type Session = Thread;

    async fn session(connection: &mut MySqlConnection) -> Result<Thread, sqlx::Error> {
        // A query without arguments: the text protocol, one round trip.
        let row = connection.fetch_one("SELECT CONNECTION_ID()").await?;
        Ok(Thread(row.try_get(0)?))
    }

    async fn end_session(options: Options<Self>, thread: Thread) -> Result<(), sqlx::Error> {
        let mut connection = MySqlConnection::connect_with(&options).await?;
        // An integer the server gave, not text from the plugin.
        let kill = format!("KILL CONNECTION {}", thread.0);
        match connection.execute(kill.as_str()).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(error))
                if error.code().as_deref() == Some(UNKNOWN_THREAD) => {}
            Err(error) => return Err(error),
        }
        connection.close().await
    }
}

/// A statement on the server, from before it is sent until the host has
/// all of its answer. Dropped before [`Running::finished`], it ends the
/// statement's session on the server, in a task of its own.
pub(super) struct Running<DB: Sessions> {
    /// Taken when the statement finished, or when dropped.
    session: Option<(Options<DB>, DB::Session)>,
}

impl<DB: Sessions> Running<DB> {
    pub(super) fn new(options: Options<DB>, session: DB::Session) -> Self {
        Self {
            session: Some((options, session)),
        }
    }

    /// The server has answered in full: its session is left as it is.
    pub(super) fn finished(mut self) {
        self.session = None;
    }
}

impl<DB: Sessions> Drop for Running<DB> {
    fn drop(&mut self) {
        let Some((options, session)) = self.session.take() else {
            return;
        };
        let name = session.to_string();
        // Outside a runtime only while one shuts down: the server then sees
        // the closed connection alone.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(
            async move {
                match tokio::time::timeout(END_SESSION_TIMEOUT, DB::end_session(options, session)).await
                {
                    Ok(Ok(())) => tracing::warn!(
                        session = %name,
                        "a statement was abandoned while it ran: its session was ended on the server"
                    ),
                    Ok(Err(error)) => tracing::warn!(
                        session = %name,
                        %error,
                        "a statement was abandoned while it ran; its session could not be ended on the server"
                    ),
                    Err(_) => tracing::warn!(
                        session = %name,
                        "a statement was abandoned while it ran; ending its session on the server timed out"
                    ),
                }
            }
            .in_current_span(),
        );
    }
}
