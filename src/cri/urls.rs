//! Streaming URLs: resolving the runtime's, building the bridge's.
//!
//! Runtimes answer `Exec`/`Attach`/`PortForward` with an absolute URL
//! (`http://127.0.0.1:41235/exec/Vh2Ua5Zr`), but some return one without a scheme or host: the
//! kubelet then fills in `http` and talks to whatever host the URL names. The bridge resolves
//! such a URL against the runtime's streaming address (its *base*: `--runtime-stream-base`, or
//! the origin of the last absolute URL this runtime returned):
//!
//! | runtime URL                 | resolved                                        |
//! |-----------------------------|-------------------------------------------------|
//! | `http://h:1/exec/T`         | unchanged (any scheme with a host)              |
//! | `//h:1/exec/T`              | base's scheme (else `http`) + `//h:1/exec/T`    |
//! | `h:1/exec/T`, `[::1]:1/...` | base's scheme (else `http`) + `://h:1/exec/T`   |
//! | `/exec/T`                   | base's `scheme://host:port` + `/exec/T`         |
//! | `exec/T`                    | base's directory + `exec/T` (RFC 3986 §5.2)     |
//!
//! A segment before the first `/` counts as a host only with a port (or in brackets): `node/x`
//! is a relative path, as RFC 3986 reads it. Without a base, the last two rows are errors.

use http::Uri;
use http::uri::{Authority, Scheme};

use crate::tokens::{SessionKind, Token};
use crate::upstream::redact_path;

/// Why a runtime URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the runtime returned an empty streaming URL")]
    Empty,
    /// Not a URL (the text shown is redacted).
    #[error("the runtime returned an invalid streaming URL {0:?}")]
    Invalid(String),
    /// Relative, and no base is known (the text shown is redacted).
    #[error(
        "the runtime returned a streaming URL without a host ({0:?}) and its streaming address \
         is unknown: set --runtime-stream-base to the runtime's streaming server \
         (containerd: stream_server_address and stream_server_port)"
    )]
    NoBase(String),
}

/// The `scheme://authority` of `uri`, if it has both.
pub fn origin(uri: &Uri) -> Option<(Scheme, Authority)> {
    Some((uri.scheme()?.clone(), uri.authority()?.clone()))
}

/// Resolves the runtime's streaming URL `raw` (see the module docs).
pub fn resolve_runtime_url(raw: &str, base: Option<&Uri>) -> Result<Uri, UrlError> {
    if raw.is_empty() {
        return Err(UrlError::Empty);
    }
    let invalid = || UrlError::Invalid(redact_path(raw));
    let parse = |s: &str| -> Result<Uri, UrlError> {
        let uri: Uri = s.parse().map_err(|_| invalid())?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(invalid());
        }
        Ok(uri)
    };
    let base_scheme = base.and_then(Uri::scheme_str).unwrap_or("http");
    if raw.contains("://") {
        return parse(raw);
    }
    if let Some(rest) = raw.strip_prefix("//") {
        return parse(&format!("{base_scheme}://{rest}"));
    }
    let need_base = || -> Result<(&Uri, Scheme, Authority), UrlError> {
        let b = base.ok_or_else(|| UrlError::NoBase(redact_path(raw)))?;
        let (s, a) = origin(b).ok_or_else(|| UrlError::NoBase(redact_path(raw)))?;
        Ok((b, s, a))
    };
    if raw.starts_with('/') {
        let (_, scheme, authority) = need_base()?;
        return parse(&format!("{scheme}://{authority}{raw}"));
    }
    let first = raw.split(['/', '?']).next().unwrap_or("");
    if looks_like_host_port(first) {
        return parse(&format!("{base_scheme}://{raw}"));
    }
    let (b, scheme, authority) = need_base()?;
    let dir = match b.path().rfind('/') {
        Some(i) => &b.path()[..=i],
        None => "/",
    };
    parse(&format!("{scheme}://{authority}{dir}{raw}"))
}

/// `host:port` or `[v6]` / `[v6]:port`.
fn looks_like_host_port(s: &str) -> bool {
    if s.starts_with('[') {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
        None => false,
    }
}

/// The bridge's URL for a session: `<advertise>/<kind>/<token>`, the advertised URL's path
/// kept as a prefix (the streaming server's base path must match it).
pub fn bridge_url(advertise: &Uri, kind: SessionKind, token: &Token) -> String {
    let scheme = advertise.scheme_str().unwrap_or("http");
    let authority = advertise.authority().map_or("", Authority::as_str);
    let prefix = advertise.path().trim_end_matches('/');
    format!(
        "{scheme}://{authority}{prefix}/{}/{}",
        kind.as_str(),
        token.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Uri {
        Uri::from_static("http://10.0.0.5:10010")
    }

    fn resolve(raw: &str, base: Option<&Uri>) -> Result<String, UrlError> {
        resolve_runtime_url(raw, base).map(|u| u.to_string())
    }

    #[test]
    fn absolute_urls_are_kept() {
        for raw in [
            "http://127.0.0.1:41235/exec/Vh2Ua5Zr",
            "https://node:10250/attach/abc",
            "http://[::1]:1/portforward/x",
        ] {
            assert_eq!(resolve(raw, Some(&base())).unwrap(), raw);
            assert_eq!(resolve(raw, None).unwrap(), raw);
        }
    }

    #[test]
    fn host_without_scheme_gets_the_base_scheme_or_http() {
        let tls = Uri::from_static("https://10.0.0.5:10010");
        assert_eq!(
            resolve("127.0.0.1:41235/exec/T", None).unwrap(),
            "http://127.0.0.1:41235/exec/T"
        );
        assert_eq!(
            resolve("127.0.0.1:41235/exec/T", Some(&tls)).unwrap(),
            "https://127.0.0.1:41235/exec/T"
        );
        assert_eq!(
            resolve("//node:7/exec/T", None).unwrap(),
            "http://node:7/exec/T"
        );
        assert_eq!(
            resolve("[::1]:9/exec/T", None).unwrap(),
            "http://[::1]:9/exec/T"
        );
    }

    #[test]
    fn path_only_urls_resolve_against_the_base() {
        assert_eq!(
            resolve("/exec/T", Some(&base())).unwrap(),
            "http://10.0.0.5:10010/exec/T"
        );
        let prefixed = Uri::from_static("http://10.0.0.5:10010/cri/");
        assert_eq!(
            resolve("/exec/T", Some(&prefixed)).unwrap(),
            "http://10.0.0.5:10010/exec/T"
        );
        assert_eq!(
            resolve("exec/T", Some(&prefixed)).unwrap(),
            "http://10.0.0.5:10010/cri/exec/T"
        );
        assert_eq!(
            resolve("exec/T", Some(&base())).unwrap(),
            "http://10.0.0.5:10010/exec/T"
        );
    }

    #[test]
    fn path_only_url_without_base_is_an_error_that_hides_the_token() {
        let err = resolve("/exec/Vh2Ua5Zr", None).unwrap_err();
        assert_eq!(err, UrlError::NoBase("/exec/Vh2U…".into()));
        let text = err.to_string();
        assert!(text.contains("--runtime-stream-base"), "{text}");
        assert!(!text.contains("Vh2Ua5Zr"), "{text}");
        assert_eq!(resolve("", None), Err(UrlError::Empty));
        assert!(matches!(
            resolve("http://exa mple/exec/Vh2Ua5Zr", None),
            Err(UrlError::Invalid(_))
        ));
    }

    #[test]
    fn bridge_url_keeps_the_advertised_prefix() {
        let store = crate::tokens::TokenStore::default();
        let token = store
            .insert(crate::tokens::Session {
                kind: SessionKind::Exec,
                runtime_url: base(),
                options: Default::default(),
                ports: Vec::new(),
                container_id: String::new(),
                pod_sandbox_id: String::new(),
            })
            .unwrap();
        let t = token.as_str();
        assert_eq!(
            bridge_url(
                &Uri::from_static("http://node:8765"),
                SessionKind::Exec,
                &token
            ),
            format!("http://node:8765/exec/{t}")
        );
        assert_eq!(
            bridge_url(
                &Uri::from_static("https://node:8765/bridge/"),
                SessionKind::PortForward,
                &token
            ),
            format!("https://node:8765/bridge/portforward/{t}")
        );
    }
}
