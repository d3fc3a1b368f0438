//! What every admin request passes before it is served: a `Host` header naming this
//! endpoint (421 otherwise: a page after DNS rebinding sends its own domain), a deadline,
//! and, for a request that changes the host, the token (401 otherwise).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::token::{self, Token};

/// How long a request may take to arrive and be answered, but for a swap's validation.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How the endpoint is reached and guarded.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    /// The address it listens on (port resolved).
    pub(crate) address: SocketAddr,
    /// Host names besides the address and `localhost` that clients use (`--admin-host`).
    pub(crate) names: Vec<String>,
    pub(crate) token: Token,
}

impl Guard {
    /// Whether a `Host` header names this endpoint: the bound address, `localhost`
    /// (with or without the port), a configured name (likewise), or, when it listens
    /// on every interface, an IP address with its port. A page after DNS rebinding
    /// sends its own domain name, which none of these is.
    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let port = self.address.port();
        let (name, given_port) = split_host(&host);
        if given_port.is_some_and(|p| p != port) {
            return false;
        }
        // A configured name may carry the port too.
        let named = |n: &String| n.eq_ignore_ascii_case(name) || n.eq_ignore_ascii_case(&host);
        if name == "localhost" || self.names.iter().any(named) {
            return true;
        }
        let Some(ip) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
        else {
            return false;
        };
        given_port.is_some() && (ip == self.address.ip() || self.address.ip().is_unspecified())
    }
}

/// `name[:port]` or `[v6][:port]`, split.
fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(port) => (name, Some(port)),
            // A port that is not a number names no endpoint.
            Err(_) => ("", Some(0)),
        },
        _ => (host, None),
    }
}

/// A short JSON error answer: `{"error": message}`.
pub(super) fn refuse(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Serves a request only if its `Host` names this endpoint (else 421) and, for any
/// method but GET and HEAD, it carries the token (else 401): every request that can
/// change the host is covered, whatever its route.
pub(super) async fn check(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    if !host.as_deref().is_some_and(|host| guard.allows_host(host)) {
        // Debug, not warn: a page can send these in a loop.
        tracing::debug!(host = ?host.unwrap_or_default(), "Admin request for another host refused (a DNS rebinding page sends its own name).");
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this endpoint answers to {} and localhost:{}; add other names the host is reached by with --admin-host NAME",
                guard.address,
                guard.address.port()
            ),
        );
    }
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reads && !authorized(request.headers(), &guard.token) {
        return unauthorized(&guard);
    }
    next.run(request).await
}

pub(super) async fn within_request_timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => refuse(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// Whether the request carries the token as `Authorization: Bearer <token>`.
fn authorized(headers: &HeaderMap, token: &Token) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|offered| token.matches(offered.trim()))
}

fn unauthorized(guard: &Guard) -> Response {
    let file = match &guard.token.held {
        token::Held::File(file) => format!(
            "the host's token is in {} (readable by its user only)",
            file.display()
        ),
        token::Held::Environment => {
            format!("the host's token is the value of {}", token::TOKEN_ENV)
        }
        token::Held::Nowhere => format!(
            "this host could not write its token (see its log); restart it with a token: {}",
            token::HOW_TO_SET
        ),
    };
    let mut response = refuse(
        StatusCode::UNAUTHORIZED,
        format!(
            "this request changes the host: send `Authorization: Bearer <token>`; {file}. `sluice plugin swap` reads it by itself (or set {} / --admin-token-file)",
            token::TOKEN_ENV
        ),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"sluice-admin\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(address: &str, names: &[&str]) -> Guard {
        Guard {
            address: address.parse().unwrap(),
            names: names.iter().map(|n| n.to_string()).collect(),
            token: token::Token::fixed_for_tests("0123456789abcdef"),
        }
    }

    #[test]
    fn only_hosts_naming_this_endpoint_are_allowed() {
        let local = guard("127.0.0.1:9464", &["sluice.internal", "proxy.example:9464"]);
        for host in [
            "127.0.0.1:9464",
            "localhost",
            "localhost:9464",
            "LOCALHOST:9464",
            "sluice.internal",
            "sluice.internal:9464",
            "proxy.example:9464",
        ] {
            assert!(local.allows_host(host), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:9464",
            "localhost:80",
            "127.0.0.1",
            "127.0.0.2:9464",
            "localhost.attacker.example:9464",
            "127.0.0.1:9464:9464",
            "127.0.0.1:x",
            "",
        ] {
            assert!(!local.allows_host(host), "{host}");
        }
        // Listening on every interface: any address of the machine, with the port.
        let public = guard("0.0.0.0:9464", &[]);
        assert!(public.allows_host("10.1.2.3:9464"));
        assert!(!public.allows_host("10.1.2.3:80"));
        assert!(!public.allows_host("10.1.2.3.nip.io:9464"));
        let v6 = guard("[::1]:9464", &[]);
        assert!(v6.allows_host("[::1]:9464"));
        assert!(!v6.allows_host("[::2]:9464"));
    }

    #[test]
    fn the_token_is_taken_from_a_bearer_header_only() {
        let token = token::Token::fixed_for_tests("0123456789abcdef");
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(authorized(&with("Bearer 0123456789abcdef"), &token));
        assert!(!authorized(&with("Bearer 0123456789abcde"), &token));
        assert!(!authorized(&with("Basic 0123456789abcdef"), &token));
        assert!(!authorized(&with("0123456789abcdef"), &token));
        assert!(!authorized(&HeaderMap::new(), &token));
    }
}
