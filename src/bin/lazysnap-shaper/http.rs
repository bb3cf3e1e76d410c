//! Counting HTTP/1.x requests in the client→server byte stream of a connection, by
//! their request lines (RFC 9112 §3: `method SP request-target SP HTTP-version CRLF`).
//!
//! The proxy does not parse messages: a line counts when it starts at a line boundary
//! and has the request-line shape. Registry pulls send no request bodies, so every such
//! line is a request; a pushed body that happens to hold one would be over-counted.

/// Longest line that is looked at; longer lines are skipped (request targets of a
/// registry are far shorter).
pub const MAX_LINE: usize = 8 * 1024;

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Splits a byte stream into lines across reads and counts request lines.
#[derive(Debug, Default)]
pub struct RequestCounter {
    /// The current line so far (without its `\n`), up to [`MAX_LINE`] bytes.
    line: Vec<u8>,
    /// The current line is longer than [`MAX_LINE`]: skip to its end.
    overlong: bool,
}

impl RequestCounter {
    /// Feeds the next bytes of the stream; returns the request lines completed in them.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut n = 0;
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            self.push(&data[..i]);
            if !self.overlong && is_request_line(&self.line) {
                n += 1;
            }
            self.line.clear();
            self.overlong = false;
            data = &data[i + 1..];
        }
        self.push(data);
        n
    }

    fn push(&mut self, part: &[u8]) {
        if self.overlong {
            return;
        }
        if self.line.len() + part.len() > MAX_LINE {
            self.overlong = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(part);
        }
    }
}

/// `line` (without `\n`) is `METHOD SP target SP HTTP/1.0|1.1`, with an optional `\r`.
pub fn is_request_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(s) = std::str::from_utf8(line) else {
        return false;
    };
    let mut parts = s.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    METHODS.contains(&method)
        && !target.is_empty()
        && (version == "HTTP/1.1" || version == "HTTP/1.0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_recognised() {
        assert!(is_request_line(b"GET /v2/ HTTP/1.1\r"));
        assert!(is_request_line(b"HEAD /v2/x/manifests/latest HTTP/1.1"));
        assert!(!is_request_line(b"HTTP/1.1 200 OK\r"));
        assert!(!is_request_line(b"Range: bytes=0-10\r"));
        assert!(!is_request_line(b"GET /v2/ HTTP/2.0\r"));
        assert!(!is_request_line(b"GET  HTTP/1.1\r"));
        assert!(!is_request_line(b"get /v2/ HTTP/1.1\r"));
    }

    #[test]
    fn requests_split_across_reads_are_counted_once() {
        let stream = b"GET /v2/ HTTP/1.1\r\nHost: r\r\n\r\n\
            GET /v2/a/blobs/sha256:00 HTTP/1.1\r\nRange: bytes=0-99\r\n\r\n\
            HEAD /v2/a/manifests/t HTTP/1.1\r\n\r\n";
        for cut in 0..stream.len() {
            let mut c = RequestCounter::default();
            let n = c.feed(&stream[..cut]) + c.feed(&stream[cut..]);
            assert_eq!(n, 3, "cut at {cut}");
        }
        let mut c = RequestCounter::default();
        let n: u64 = stream.iter().map(|b| c.feed(std::slice::from_ref(b))).sum();
        assert_eq!(n, 3);
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_one_counts() {
        let mut c = RequestCounter::default();
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE));
        long.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(c.feed(&long), 0);
        assert_eq!(c.feed(b"GET /v2/ HTTP/1.1\r\n"), 1);
    }
}
