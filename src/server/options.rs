//! Stream options of a standalone request, from its query string.
//!
//! A runtime's streaming URL carries no options: the runtime waits for exactly the streams of
//! the CRI request behind the token (protocol.md §3.4), and a v5 client never names them. In
//! standalone mode they come from the query: `stdin`/`stdout`/`stderr`/`tty` = `true`|`1`
//! (`false`|`0`), or the kubelet's spellings `input`/`output`/`error`/`tty` = `1`.

use thiserror::Error;

use crate::upstream::remotecommand::StreamOptions;

/// Why a query does not say which streams to create.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OptionsError {
    #[error(
        "the stream options of this session are unknown: add stdin, stdout, stderr and tty \
         query parameters (true/false) matching the CRI request behind the token"
    )]
    Missing,
    #[error("query parameter {name}={value:?} is not a boolean (true, false, 1 or 0)")]
    NotBoolean { name: String, value: String },
    #[error("you must specify at least one of stdin, stdout, stderr")]
    NoStreams,
}

/// Parses the stream options; refuses a query that names none of them.
pub fn stream_options(query: Option<&str>) -> Result<StreamOptions, OptionsError> {
    let mut opts = StreamOptions::default();
    let mut seen = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "stdin" | "input" => &mut opts.stdin,
            "stdout" | "output" => &mut opts.stdout,
            "stderr" | "error" => &mut opts.stderr,
            "tty" => &mut opts.tty,
            _ => continue,
        };
        *slot = match value {
            "true" | "1" => true,
            "false" | "0" | "" => false,
            other => {
                return Err(OptionsError::NotBoolean {
                    name: name.to_owned(),
                    value: other.to_owned(),
                });
            }
        };
        seen = true;
    }
    if !seen {
        return Err(OptionsError::Missing);
    }
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return Err(OptionsError::NoStreams);
    }
    // The kubelet's front end drops stderr when a terminal is requested, and CRI refuses
    // both, so the runtime-side request never has stderr with a tty.
    if opts.tty {
        opts.stderr = false;
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_server_spellings_are_read() {
        let o = stream_options(Some(
            "command=sh&stdin=true&stdout=true&stderr=false&tty=false",
        ))
        .unwrap();
        assert_eq!(
            o,
            StreamOptions {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: false
            }
        );
    }

    #[test]
    fn kubelet_spellings_are_read() {
        let o = stream_options(Some("input=1&output=1&error=1")).unwrap();
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
    }

    #[test]
    fn tty_drops_stderr_like_the_kubelet() {
        let o = stream_options(Some("stdout=1&stderr=1&tty=1")).unwrap();
        assert!(o.tty && !o.stderr);
    }

    #[test]
    fn a_query_without_options_is_refused_with_a_hint() {
        assert_eq!(stream_options(None), Err(OptionsError::Missing));
        assert_eq!(
            stream_options(Some("command=ls")),
            Err(OptionsError::Missing)
        );
        assert!(
            OptionsError::Missing
                .to_string()
                .contains("stdin, stdout, stderr")
        );
    }

    #[test]
    fn options_naming_no_stream_are_refused() {
        assert_eq!(
            stream_options(Some("stdin=false&tty=true")),
            Err(OptionsError::NoStreams)
        );
    }

    #[test]
    fn non_boolean_values_are_refused() {
        assert!(matches!(
            stream_options(Some("stdin=yes")),
            Err(OptionsError::NotBoolean { .. })
        ));
    }
}
