//! What every request passes through: the read-only and cross-origin checks of
//! actions, and the security headers of every response.
//!
//! The checks wrap the whole scope, not single handlers, so that a route added
//! later cannot forget them, and a request to a path that does not exist is
//! refused the same way.

use std::future::Future;

use actix_web::Error;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};

use crate::{Inner, views};

/// The Content-Security-Policy sent with every response: scripts, styles and
/// connections only from the dashboard itself, nothing inline, no frames, and
/// forms posting only back to it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// Runs the checks, then the request, then adds the headers.
pub(crate) fn check<S, B>(
    inner: &Inner,
    req: ServiceRequest,
    srv: &S,
) -> impl Future<Output = Result<ServiceResponse<BoxBody>, Error>> + 'static + use<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    let pending = match refusal(inner, &req) {
        None => Ok(srv.call(req)),
        Some((status, message)) => {
            tracing::info!(
                method = %req.method(),
                path = req.path(),
                reason = message,
                "dashboard refused a request"
            );
            let page = views::message_page(&inner.base, status, "Refused", message);
            Err(req.into_response(page))
        }
    };
    async move {
        let mut res = match pending {
            Ok(call) => call.await?.map_into_boxed_body(),
            Err(refused) => refused,
        };
        let headers = res.headers_mut();
        for (name, value) in [
            ("content-security-policy", CONTENT_SECURITY_POLICY),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "same-origin"),
            ("x-frame-options", "DENY"),
            ("cross-origin-opener-policy", "same-origin"),
        ] {
            headers.insert(
                header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        if !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        Ok(res)
    }
}

/// Why a request may not run, if it may not.
fn refusal(inner: &Inner, req: &ServiceRequest) -> Option<(StatusCode, &'static str)> {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    if inner.read_only {
        return Some((
            StatusCode::FORBIDDEN,
            "this dashboard is read-only: it accepts no actions",
        ));
    }
    // Browsers send Sec-Fetch-Site on every request; only the dashboard's own
    // pages (or the user typing a URL) may trigger an action.
    if let Some(site) = req.headers().get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Some((
            StatusCode::FORBIDDEN,
            "cross-site request refused (Sec-Fetch-Site)",
        ));
    }
    // Browsers send Origin on every POST; it must be the dashboard's own (or
    // one configured for a proxy). Clients that send neither header are not
    // browsers, so no other site can make them post: they pass.
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
        let own_host = req.connection_info().host().to_ascii_lowercase();
        let authority = origin.split_once("://").map(|(_, rest)| rest);
        let same = authority == Some(own_host.as_str());
        if !same && !inner.allowed_origins.contains(&origin) {
            return Some((
                StatusCode::FORBIDDEN,
                "cross-origin request refused (Origin)",
            ));
        }
    }
    None
}
