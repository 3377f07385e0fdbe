//! Who may talk to this server: the `Host` a request names (against DNS rebinding), whether an
//! unsafe request comes from another site's page (against cross-site request forgery), and CORS
//! for the front ends served elsewhere that the operator lists.

use super::ApiError;
use crate::config::{Config, Origin};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::warn;

/// The hosts this server answers for and the origins allowed to call it.
#[derive(Debug)]
pub struct Guard {
    /// Host names (not IP addresses) accepted in `Host`, lower case, without a port.
    names: Vec<String>,
    /// Bound to every interface with no public URL: whatever name clients use is accepted.
    any_host: bool,
    public_url: Option<Origin>,
    cors_origins: Vec<Origin>,
}

impl Guard {
    /// The rules for a server bound to `bound` with `config`'s public URL and CORS origins.
    pub fn new(config: &Config, bound: SocketAddr) -> Guard {
        let mut names = Vec::new();
        if bound.ip().is_loopback() || bound.ip().is_unspecified() {
            names.push("localhost".to_string());
        }
        if let Some(url) = &config.public_url {
            names.push(url.host().to_string());
        }
        let any_host = bound.ip().is_unspecified() && config.public_url.is_none();
        if any_host {
            warn!(
                addr = %bound,
                "listening on every interface without --public-url: any Host is answered, so a DNS \
                 rebinding page could reach this server; set --public-url to the URL clients use"
            );
        }
        Guard {
            names,
            any_host,
            public_url: config.public_url.clone(),
            cors_origins: config.cors_origins.clone(),
        }
    }

    /// CORS for the listed origins (preflight, the headers the API reads and the ones it
    /// answers with); `None` when no origin is listed.
    pub fn cors(&self) -> Option<CorsLayer> {
        if self.cors_origins.is_empty() {
            return None;
        }
        let origins = self
            .cors_origins
            .iter()
            .map(|o| HeaderValue::from_str(&o.to_string()).expect("a parsed origin is a valid header value"));
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("idempotency-key"),
                    HeaderName::from_static("prefer"),
                    HeaderName::from_static("last-event-id"),
                    super::REQUEST_ID,
                    HeaderName::from_static(crate::trace_context::TRACEPARENT),
                    HeaderName::from_static("tracestate"),
                ])
                .expose_headers([
                    header::LOCATION,
                    header::RETRY_AFTER,
                    header::CONTENT_LOCATION,
                    HeaderName::from_static("preference-applied"),
                    HeaderName::from_static("idempotent-replayed"),
                    super::REQUEST_ID,
                ])
                .max_age(Duration::from_secs(3600)),
        )
    }

    /// Admits a request, or says with which problem it is refused.
    pub(super) fn admit(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = uri.authority().map(|a| a.as_str()).or_else(|| headers.get(header::HOST)?.to_str().ok());
        let host = host.map(HostPort::parse);
        if let Some(host) = &host
            && !self.answers_for(host)
        {
            return Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected-request",
                "Misdirected request",
            )
            .detail(format!(
                "this server does not answer for the host `{}`; its operator sets --public-url to the URL \
                     clients use",
                host.host
            )));
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let parsed = origin.and_then(|o| o.parse::<Origin>().ok());
        if parsed.as_ref().is_some_and(|o| self.cors_origins.contains(o)) {
            return Ok(());
        }
        let same_origin = match headers.get("sec-fetch-site").map(|v| v.as_bytes()) {
            Some(site) => site == b"same-origin" || site == b"none",
            None => match (origin, &parsed) {
                // curl, scripts and servers send neither header: they are not a browser that
                // can be tricked into sending a request.
                (None, _) => true,
                (Some(_), Some(origin)) => {
                    self.public_url.as_ref() == Some(origin) || host.as_ref().is_some_and(|h| h.is(origin))
                }
                // `Origin: null` (a sandboxed or privacy-sensitive context) or garbage.
                (Some(_), None) => false,
            },
        };
        if same_origin {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "cross-site", "Cross-site request refused").detail(
                "unsafe requests from another site's page are refused; a front end served elsewhere \
                 needs its origin in --cors-origins",
            ))
        }
    }

    fn answers_for(&self, host: &HostPort) -> bool {
        // A page that rebinds a DNS name to this server names that name in `Host`; a request
        // naming an address is from a page whose origin is that address, this server itself.
        self.any_host || host.is_ip() || self.names.contains(&host.host)
    }
}

/// A `Host` header split into a lower-case host and its port.
struct HostPort {
    host: String,
    port: Option<u16>,
}

impl HostPort {
    fn parse(value: &str) -> HostPort {
        let value = value.trim().to_ascii_lowercase();
        let (host, port) = match value.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host.to_string(), port.parse().ok()),
            _ => (value, None),
        };
        // `localhost.` is `localhost`.
        let host = host.strip_suffix('.').map(str::to_string).unwrap_or(host);
        HostPort { host, port }
    }

    fn is_ip(&self) -> bool {
        let bare = self.host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&self.host);
        bare.parse::<IpAddr>().is_ok()
    }

    /// Whether a page of `origin` is served by this host: same host, same port (a port left out
    /// on either side is the scheme's default).
    fn is(&self, origin: &Origin) -> bool {
        let port = self.port.filter(|p| *p != origin.default_port());
        self.host == origin.host() && port == origin.port()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(addr: &str, args: &[&str]) -> Guard {
        let mut argv = vec!["courier"];
        argv.extend_from_slice(args);
        let config = <crate::config::Cli as clap::Parser>::parse_from(argv).config;
        Guard::new(&config, addr.parse().unwrap())
    }

    fn request(method: Method, host: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap) {
        let mut map = HeaderMap::new();
        map.insert(header::HOST, host.parse().unwrap());
        for (name, value) in headers {
            map.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        (method, Uri::from_static("/api/v1/tasks"), map)
    }

    fn admits(guard: &Guard, (method, uri, headers): (Method, Uri, HeaderMap)) -> Result<(), u16> {
        guard.admit(&method, &uri, &headers).map_err(|p| p.status().as_u16())
    }

    #[test]
    fn a_loopback_server_answers_for_its_addresses_and_localhost_only() {
        let g = guard("127.0.0.1:3000", &[]);
        for host in ["127.0.0.1:3000", "localhost:3000", "LOCALHOST.:3000", "[::1]:3000", "10.1.2.3:3000"] {
            assert_eq!(admits(&g, request(Method::GET, host, &[])), Ok(()), "{host}");
        }
        assert_eq!(admits(&g, request(Method::GET, "evil.example:3000", &[])), Err(421));
    }

    #[test]
    fn the_public_url_names_the_host_behind_a_proxy() {
        let g = guard("10.0.0.5:3000", &["--public-url", "https://courier.example.com"]);
        assert_eq!(admits(&g, request(Method::GET, "courier.example.com", &[])), Ok(()));
        assert_eq!(admits(&g, request(Method::GET, "localhost:3000", &[])), Err(421));
        let open = guard("0.0.0.0:3000", &[]);
        assert_eq!(admits(&open, request(Method::GET, "anything.lan:3000", &[])), Ok(()));
    }

    #[test]
    fn unsafe_requests_from_other_sites_are_refused() {
        let g = guard("127.0.0.1:3000", &["--cors-origins", "http://localhost:4200"]);
        let post = |headers: &[(&str, &str)]| admits(&g, request(Method::POST, "127.0.0.1:3000", headers));
        assert_eq!(post(&[]), Ok(()));
        assert_eq!(post(&[("sec-fetch-site", "same-origin")]), Ok(()));
        assert_eq!(post(&[("origin", "http://127.0.0.1:3000")]), Ok(()));
        assert_eq!(post(&[("sec-fetch-site", "cross-site"), ("origin", "http://localhost:4200")]), Ok(()));
        assert_eq!(post(&[("sec-fetch-site", "cross-site")]), Err(403));
        assert_eq!(post(&[("sec-fetch-site", "same-site"), ("origin", "http://localhost:3000")]), Err(403));
        assert_eq!(post(&[("origin", "http://evil.example")]), Err(403));
        assert_eq!(post(&[("origin", "null")]), Err(403));
        assert_eq!(
            admits(&g, request(Method::GET, "127.0.0.1:3000", &[("origin", "http://evil.example")])),
            Ok(())
        );
    }
}
