//! `serve`: the operator dashboard (crate `command-coordinator-dashboard`)
//! as a standalone web server, for when no host runs or none mounts it.
//!
//! Authentication, when the environment variable [`TOKEN_VAR`] is set: HTTP
//! basic auth with any user name and that token as the password. Without it,
//! anyone who reaches the address can use the dashboard, so the default
//! address is loopback only.

use actix_web::dev::Service;
use actix_web::http::header;
use actix_web::{App, HttpResponse, HttpServer};
use command_coordinator::{DatabaseConfig, PgStore, SchemaName};
use command_coordinator_dashboard::Dashboard;

use crate::db::{CliError, Result};

/// The environment variable holding the optional basic-auth token.
pub const TOKEN_VAR: &str = "COMMAND_COORDINATOR_DASHBOARD_TOKEN";

/// Connections the server may hold: pages run a few short queries each.
const POOL_SIZE: usize = 8;

/// What `serve` was asked for.
pub struct Serve {
    pub bind: String,
    pub read_only: bool,
    pub base_path: String,
}

/// Runs the server until Ctrl-C. Builds its own actix `System`: call it
/// from a thread without a runtime.
pub fn run(url: &str, schema: SchemaName, serve: Serve) -> Result<()> {
    let config = DatabaseConfig::from_url(url)
        .map_err(|e| CliError::usage(format!("--database-url: {e}")))?
        .with_schema(schema)
        .with_pool_size(POOL_SIZE)
        .map_err(|e| CliError::new(e.to_string()))?;
    let dashboard_base = serve.base_path.clone();
    let token = std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty());
    actix_web::rt::System::new().block_on(async move {
        let pool = config
            .create_pool()
            .map_err(|e| CliError::new(format!("{config}: {e}")))?;
        let store = PgStore::new(pool, config.schema().clone());
        let dashboard = Dashboard::new(store)
            .base_path(&dashboard_base)
            .map_err(|e| CliError::usage(format!("--base-path: {e}")))?
            .read_only(serve.read_only);
        let base = dashboard.base().to_owned();
        let server = HttpServer::new(move || {
            let token = token.clone();
            App::new().service(dashboard.scope().wrap_fn(move |req, srv| {
                let allowed = token.as_deref().is_none_or(|t| authorized(&req, t));
                let call = allowed.then(|| srv.call(req));
                async move {
                    match call {
                        Some(call) => call.await,
                        None => Err(actix_web::error::InternalError::from_response(
                            "authentication required",
                            HttpResponse::Unauthorized()
                                .insert_header((
                                    header::WWW_AUTHENTICATE,
                                    "Basic realm=\"command-coordinator\", charset=\"UTF-8\"",
                                ))
                                .body("authentication required"),
                        )
                        .into()),
                    }
                }
            }))
        })
        .bind(&serve.bind)
        .map_err(|e| CliError::new(format!("cannot listen on {}: {e}", serve.bind)))?;
        let auth = if std::env::var(TOKEN_VAR).is_ok_and(|t| !t.is_empty()) {
            format!("basic auth with the token in {TOKEN_VAR}")
        } else {
            format!("no authentication (set {TOKEN_VAR} to require one)")
        };
        for addr in server.addrs() {
            eprintln!(
                "dashboard: http://{addr}{base}/  ({}, {auth}; database {config})",
                if serve.read_only {
                    "read-only"
                } else {
                    "actions enabled"
                }
            );
        }
        server
            .run()
            .await
            .map_err(|e| CliError::new(format!("the dashboard server failed: {e}")))
    })
}

/// Whether the request carries `Authorization: Basic` with `token` as the
/// password (any user name), compared in constant time.
fn authorized(req: &actix_web::dev::ServiceRequest, token: &str) -> bool {
    use base64::Engine;
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let password = match decoded.iter().position(|b| *b == b':') {
        Some(i) => &decoded[i + 1..],
        None => return false,
    };
    constant_time_eq(password, token.as_bytes())
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_content_and_length() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
