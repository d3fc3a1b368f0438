//! The client side, for `sluice plugin swap` and `sluice plugin status`: finds the
//! host's token by itself (see [`super::token`]) and sends it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::token::{self, Token};
use super::{SwapRequest, SwapResponse};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        // 4xx answers carry the rejection reason: read them, do not fail on them.
        .http_status_as_error(false)
        // Compiling a large component can take seconds.
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn unreachable(address: SocketAddr) -> String {
    format!(
        "no Sluice admin endpoint answers at {address}; is `sluice run` running, and with this --admin address?"
    )
}

/// What an error answer (`{"error": ...}`) says.
fn error_text(value: &serde_json::Value) -> Option<String> {
    value["error"].as_str().map(str::to_owned)
}

/// Asks the host at `address` to swap in `path`; `token_file` names the token file
/// when the host was told where to write it.
pub fn swap(
    address: SocketAddr,
    path: &Path,
    token_file: Option<&Path>,
) -> anyhow::Result<SwapResponse> {
    // The host resolves the path itself: send it absolute.
    let path =
        std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let token = token::for_client(token_file, address.port())?;
    let mut request = agent().post(format!("http://{address}/plugin/swap"));
    if let Some(token) = &token {
        request = request.header("Authorization", bearer(token));
    }
    let mut response = request
        .send_json(&SwapRequest { path })
        .with_context(|| unreachable(address))?;
    let status = response.status().as_u16();
    let answer: serde_json::Value = response
        .body_mut()
        .read_json()
        .context("reading the admin endpoint's answer")?;
    if let Some(error) = error_text(&answer) {
        let hint = match (status, &token) {
            (401, None) => format!(
                "; no token was found for port {} (looked for {}); {}",
                address.port(),
                token::default_file(address.port())
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "no default file: HOME is not set".into()),
                token::HOW_TO_SET
            ),
            _ => String::new(),
        };
        anyhow::bail!("the admin endpoint at {address} answered {status}: {error}{hint}");
    }
    serde_json::from_value(answer).context("reading the admin endpoint's answer")
}

fn bearer(token: &Token) -> String {
    format!("Bearer {}", token.expose())
}

pub fn status(address: SocketAddr) -> anyhow::Result<serde_json::Value> {
    agent()
        .get(format!("http://{address}/status"))
        .call()
        .with_context(|| unreachable(address))?
        .body_mut()
        .read_json()
        .context("reading the admin endpoint's answer")
}
