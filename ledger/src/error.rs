//! The ledger's error type: a small closed set of kinds, so `kind()` can be a metric label.

/// Everything the ledger can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database cannot be reached (refused, timed out, name resolution, closed pool).
    #[error("database unreachable at {url}: {source}")]
    Unreachable {
        /// The URL with any password removed.
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// The database answered but refused us (authentication, unknown role or database).
    #[error("database at {url} refused the connection: {source}")]
    Refused {
        /// The URL with any password removed.
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// A query failed after the connection was made.
    #[error("database query failed: {0}")]
    Query(#[source] sqlx::Error),
    /// A statement did not finish within its deadline.
    #[error("database operation timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Applying the migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Bad user input: a time, a duration, an address, a server name.
    #[error("{0}")]
    InvalidInput(String),
    /// The server name is not in the ledger.
    #[error("unknown server {0:?}: no event or attribution mentions it")]
    UnknownServer(String),
    /// The local spool file could not be read or written.
    #[error("spool file {path}: {source}")]
    Spool {
        /// The spool file.
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Registering the metrics failed (normally: registered twice).
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl LedgerError {
    /// A short, stable label for this error's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::Refused { .. } => "refused",
            Self::Query(_) => "query",
            Self::Timeout(_) => "timeout",
            Self::Migrate(_) => "migrate",
            Self::InvalidInput(_) => "invalid_input",
            Self::UnknownServer(_) => "unknown_server",
            Self::Spool { .. } => "spool",
            Self::Metrics(_) => "metrics",
        }
    }

    /// True when retrying later may succeed (the database is down, slow or restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout(_) => true,
            Self::Query(e) => is_transient_sqlx(e),
            _ => false,
        }
    }

    /// True when Postgres refused the row itself (SQLSTATE class 22, data exception, or 23, integrity
    /// constraint violation, e.g. a CHECK): retrying cannot help, but other rows are fine. Other
    /// permanent errors (a missing table, no permission) say nothing about the row, so rows are kept.
    /// A unique-key violation (SQLSTATE 23505).
    pub(crate) fn is_unique_violation(&self) -> bool {
        match self {
            Self::Query(sqlx::Error::Database(db)) => db.code().is_some_and(|c| c == "23505"),
            _ => false,
        }
    }

    pub(crate) fn is_row_rejection(&self) -> bool {
        match self {
            Self::Query(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
            _ => false,
        }
    }

    /// Classify a sqlx error that happened while connecting.
    pub(crate) fn connect(url: &str, source: sqlx::Error) -> Self {
        let url = redact_url(url);
        if is_refusal(&source) {
            Self::Refused { url, source }
        } else {
            Self::Unreachable { url, source }
        }
    }

    /// Classify a sqlx error from a statement: connection-level failures become `Unreachable`.
    pub(crate) fn query(url: &str, source: sqlx::Error) -> Self {
        if is_transient_sqlx(&source) {
            Self::Unreachable {
                url: redact_url(url),
                source,
            }
        } else {
            Self::Query(source)
        }
    }
}

/// Authentication failures and unknown roles or databases: retrying does not help.
fn is_refusal(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            // SQLSTATE class 28 = invalid authorization; 3D000 = invalid catalog name (no such database).
            db.code().is_some_and(|c| c.starts_with("28") || c == "3D000")
        }
        _ => false,
    }
}

fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        // SQLSTATE class 08 = connection exception; 57P01..57P03 = admin shutdown, crash shutdown,
        // cannot connect now (the server is starting or stopping).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "57P02" || c == "57P03"),
        _ => false,
    }
}

/// The URL with the password (if any) replaced by `***`, for error text and logs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_error_text() {
        assert_eq!(
            redact_url("postgres://egress:s3cret@db:5432/egress"),
            "postgres://egress:***@db:5432/egress"
        );
        assert_eq!(
            redact_url("postgres://egress@db/egress"),
            "postgres://egress@db/egress"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("postgres://u:p@h"), "postgres://u:***@h");
    }
}
