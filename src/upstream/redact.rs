//! Redaction of runtime streaming URLs for errors and logs.
//!
//! The last path segment of a runtime streaming URL (`/exec/{token}`, `/attach/{token}`,
//! `/portforward/{token}`) is a bearer capability: whoever holds it can run the command. It must
//! never reach a log line, a metric or an error message in full.

use http::Uri;

/// How many characters of the last path segment [`redact_path`] keeps: enough to tell two
/// sessions apart in a log, far too few to use (runtime tokens are 8 characters).
pub const KEPT_SEGMENT_CHARS: usize = 4;

/// What replaces the redacted part.
const ELLIPSIS: char = '…';

/// Redacts the last segment of a URL path: keeps its first [`KEPT_SEGMENT_CHARS`] characters
/// and replaces the rest with `…` (`/exec/Vh2Ua5Zr` becomes `/exec/Vh2U…`).
///
/// A last segment of at most [`KEPT_SEGMENT_CHARS`] characters is replaced whole, so a short
/// token is never shown complete. A query string, if any, becomes `?…`: standalone mode passes
/// options there and nothing in it helps a reader.
pub fn redact_path(path: &str) -> String {
    let (path, query) = match path.split_once('?') {
        Some((path, _)) => (path, true),
        None => (path, false),
    };
    let (dir, last) = match path.rfind('/') {
        Some(i) => path.split_at(i + 1),
        None => ("", path),
    };
    let mut out = String::with_capacity(dir.len() + KEPT_SEGMENT_CHARS * 4 + 8);
    out.push_str(dir);
    if last.chars().nth(KEPT_SEGMENT_CHARS).is_some() {
        out.extend(last.chars().take(KEPT_SEGMENT_CHARS));
        out.push(ELLIPSIS);
    } else if !last.is_empty() {
        out.push(ELLIPSIS);
    }
    if query {
        out.push('?');
        out.push(ELLIPSIS);
    }
    out
}

/// `scheme://host[:port]` plus the redacted path. Userinfo is dropped: it is a credential too.
pub(crate) fn redact_uri(uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            let mut out = format!("{scheme}://{}", authority.host());
            if let Some(port) = authority.port_u16() {
                out.push_str(&format!(":{port}"));
            }
            out.push_str(&redact_path(path));
            out
        }
        _ => redact_path(path),
    }
}

/// Redacts a `Location` header value, absolute or relative.
pub(crate) fn redact_location(location: &str) -> String {
    match location.parse::<Uri>() {
        Ok(uri) if uri.scheme().is_some() || location.starts_with('/') => redact_uri(&uri),
        _ => ELLIPSIS.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_segment_keeps_four_characters() {
        assert_eq!(redact_path("/exec/Vh2Ua5Zr"), "/exec/Vh2U…");
        assert_eq!(
            redact_path("/cri/portforward/abcdefgh"),
            "/cri/portforward/abcd…"
        );
    }

    #[test]
    fn short_segment_is_replaced_whole() {
        assert_eq!(redact_path("/exec/abcd"), "/exec/…");
        assert_eq!(redact_path("/exec/"), "/exec/");
        assert_eq!(redact_path("/"), "/");
        assert_eq!(redact_path(""), "");
    }

    #[test]
    fn query_is_hidden() {
        assert_eq!(
            redact_path("/exec/Vh2Ua5Zr?stdin=1&token=x"),
            "/exec/Vh2U…?…"
        );
    }

    #[test]
    fn multibyte_characters_are_counted_as_characters() {
        assert_eq!(redact_path("/exec/ééééé"), "/exec/éééé…");
    }

    #[test]
    fn uri_redaction_drops_userinfo_and_token() {
        let uri: Uri = "http://user:secret@127.0.0.1:41235/exec/Vh2Ua5Zr"
            .parse()
            .unwrap();
        assert_eq!(redact_uri(&uri), "http://127.0.0.1:41235/exec/Vh2U…");
        let uri: Uri = "https://[::1]/attach/Vh2Ua5Zr".parse().unwrap();
        assert_eq!(redact_uri(&uri), "https://[::1]/attach/Vh2U…");
    }

    #[test]
    fn location_redaction_handles_relative_and_garbage() {
        assert_eq!(redact_location("/exec/Vh2Ua5Zr"), "/exec/Vh2U…");
        assert_eq!(
            redact_location("http://other:1/exec/Vh2Ua5Zr"),
            "http://other:1/exec/Vh2U…"
        );
        assert_eq!(redact_location("exec Vh2Ua5Zr"), "…");
    }
}
