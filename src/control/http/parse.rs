//! HTTP/1.1 requests from a byte stream, sans I/O: the connection appends what it
//! reads to [`Parser::buffer`] and asks [`Parser::poll`] for a complete request. The
//! parser never holds more than one request's head and body: [`Parser::room`] says
//! how many more bytes it will take now, so a connection never reads (or buffers)
//! past the limits, however much a client sends.
//!
//! The head is parsed with `httparse`; bodies are framed by `Content-Length` or by
//! chunked transfer coding, decoded as it arrives. What is wrong comes back as an
//! [`HttpError`] carrying the status to answer with: 400 malformed, 413 body too
//! large, 431 head too large or too many headers, 501 an unknown transfer coding,
//! 505 another HTTP version (an HTTP/2 preface included).

use std::net::SocketAddr;

/// What a request may weigh.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Request line and headers, in bytes.
    pub max_head: usize,
    /// Header fields.
    pub max_headers: usize,
    /// The body, in bytes (after chunked decoding).
    pub max_body: usize,
}

/// A request with its head and whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    pub method: String,
    /// The request target as sent: path and query, still percent-encoded.
    pub target: String,
    /// HTTP/1.x minor version.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The connection stays open after the response.
    pub keep_alive: bool,
}

/// A request the server refuses, with the status to say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
        }
    }
}

/// How far the parser is with the current request. Once a head is complete its
/// bytes leave the buffer, and chunks leave it as they are decoded: the buffer never
/// holds more than the current request's undecoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Waiting for a complete head; the first `scanned` bytes hold no blank line.
    Head { scanned: usize },
    /// Head read; the body is the next `len` bytes.
    Length { head: Head, len: usize },
    /// Head read; the body comes in chunks, decoded into `body` so far, with
    /// `framing` bytes of chunk lines and trailer seen.
    Chunked {
        head: Head,
        body: Vec<u8>,
        framing: usize,
        trailer: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    method: String,
    target: String,
    minor: u8,
    headers: Vec<(String, String)>,
    keep_alive: bool,
}

/// What the parser has for the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete request.
    Request(RawRequest),
    /// The head asks `Expect: 100-continue` and its body is acceptable: answer
    /// "100 Continue" now, then go on reading.
    Continue,
}

/// The HTTP/2 connection preface, which a client that assumes HTTP/2 sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
/// The longest chunk-size line (size and extensions) taken.
const MAX_CHUNK_LINE: usize = 1024;

/// Parses one connection's requests, one at a time.
pub struct Parser {
    limits: ParseLimits,
    /// Bytes read and not yet consumed.
    pub buffer: Vec<u8>,
    stage: Stage,
    continued: bool,
}

impl Parser {
    pub fn new(limits: ParseLimits) -> Parser {
        Parser {
            limits,
            buffer: Vec::new(),
            stage: Stage::Head { scanned: 0 },
            continued: false,
        }
    }

    /// Whether part of a request has arrived (a client is in the middle of one).
    pub fn started(&self) -> bool {
        !self.buffer.is_empty() || self.in_body()
    }

    /// Whether the head is complete and the body is being read.
    pub fn in_body(&self) -> bool {
        !matches!(self.stage, Stage::Head { .. })
    }

    /// How many more bytes the parser takes now; 0: stop reading until `poll` has
    /// made progress. One byte past a limit is taken, so the limit is detected.
    pub fn room(&self) -> usize {
        let cap = match &self.stage {
            Stage::Head { .. } => self.limits.max_head + 1,
            Stage::Length { len, .. } => *len,
            Stage::Chunked { body, framing, .. } => {
                (self.limits.max_body - body.len()) + self.limits.max_head.saturating_sub(*framing) + 3
            }
        };
        cap.saturating_sub(self.buffer.len())
    }

    /// The next request, once it is complete. `Ok(None)`: more bytes are needed.
    pub fn poll(&mut self) -> Result<Option<Parsed>, HttpError> {
        loop {
            match std::mem::replace(&mut self.stage, Stage::Head { scanned: 0 }) {
                Stage::Head { scanned } => {
                    let Some(head) = self.head(scanned)? else {
                        return Ok(None);
                    };
                    self.stage = self.body_stage(head)?;
                    if let Some(p) = self.expect_continue() {
                        return Ok(Some(p));
                    }
                }
                Stage::Length { head, len } => {
                    if self.buffer.len() < len {
                        self.stage = Stage::Length { head, len };
                        return Ok(None);
                    }
                    let body: Vec<u8> = self.buffer.drain(..len).collect();
                    return Ok(Some(self.finish(head, body)));
                }
                Stage::Chunked {
                    head,
                    mut body,
                    mut framing,
                    mut trailer,
                } => {
                    if !self.chunks(&mut body, &mut framing, &mut trailer)? {
                        self.stage = Stage::Chunked {
                            head,
                            body,
                            framing,
                            trailer,
                        };
                        return Ok(None);
                    }
                    return Ok(Some(self.finish(head, body)));
                }
            }
        }
    }

    fn finish(&mut self, head: Head, body: Vec<u8>) -> Parsed {
        self.continued = false;
        // Memory held for a large request goes back once it is consumed.
        if self.buffer.capacity() > 64 << 10 && self.buffer.len() < 16 << 10 {
            self.buffer.shrink_to(16 << 10);
        }
        Parsed::Request(RawRequest {
            method: head.method,
            target: head.target,
            minor: head.minor,
            headers: head.headers,
            body,
            keep_alive: head.keep_alive,
        })
    }

    /// "100 Continue" once per request whose head asks for it, before its body.
    fn expect_continue(&mut self) -> Option<Parsed> {
        let head = match &self.stage {
            Stage::Length { head, len } if *len > 0 => head,
            Stage::Chunked { head, .. } => head,
            _ => return None,
        };
        let asks = header(&head.headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if asks && head.minor >= 1 && !self.continued {
            self.continued = true;
            return Some(Parsed::Continue);
        }
        None
    }

    fn too_large(&self) -> HttpError {
        HttpError::new(
            431,
            format!(
                "request line and headers exceed the {}-byte limit",
                self.limits.max_head
            ),
        )
    }

    /// The head, once its blank line has arrived; its bytes leave the buffer.
    /// Bytes are scanned once: a head that trickles in costs no more than one that
    /// arrives whole.
    fn head(&mut self, scanned: usize) -> Result<Option<Head>, HttpError> {
        // Blank lines before a request are allowed (RFC 9112 2.2).
        let lead = self.buffer.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
        if lead > 0 {
            self.buffer.drain(..lead);
        }
        let scanned = scanned.saturating_sub(lead);
        if H2_PREFACE.starts_with(&self.buffer[..self.buffer.len().min(H2_PREFACE.len())]) && !self.buffer.is_empty() {
            if self.buffer.len() >= H2_PREFACE.len() {
                return Err(HttpError::new(505, "HTTP/2 is not supported here; use HTTP/1.1"));
            }
            self.stage = Stage::Head { scanned: 0 };
            return Ok(None);
        }
        let from = scanned.saturating_sub(3);
        let end = self.buffer[from..].windows(2).enumerate().find_map(|(i, w)| match w {
            [b'\n', b'\n'] => Some(from + i + 2),
            [b'\n', b'\r'] if self.buffer.get(from + i + 2) == Some(&b'\n') => Some(from + i + 3),
            _ => None,
        });
        let Some(end) = end else {
            if self.buffer.len() > self.limits.max_head {
                return Err(self.too_large());
            }
            self.stage = Stage::Head {
                scanned: self.buffer.len(),
            };
            return Ok(None);
        };
        if end > self.limits.max_head {
            return Err(self.too_large());
        }
        let mut slots = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(&self.buffer[..end]) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(HttpError::new(400, "malformed request head")),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::new(
                    431,
                    format!("more than {} header fields", self.limits.max_headers),
                ))
            }
            Err(httparse::Error::Version) => {
                return Err(HttpError::new(505, "only HTTP/1.0 and HTTP/1.1 are supported"))
            }
            Err(e) => return Err(HttpError::new(400, format!("malformed request: {e}"))),
        }
        let minor = req.version.unwrap_or(1);
        let mut headers = Vec::with_capacity(req.headers.len());
        for h in req.headers.iter() {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| HttpError::new(400, format!("header {} is not valid UTF-8", h.name)))?;
            headers.push((h.name.to_string(), value.trim().to_string()));
        }
        let connection = header(&headers, "connection").unwrap_or("").to_ascii_lowercase();
        let keep_alive = if minor == 0 {
            connection.split(',').any(|t| t.trim() == "keep-alive")
        } else {
            !connection.split(',').any(|t| t.trim() == "close")
        };
        let head = Head {
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            minor,
            headers,
            keep_alive,
        };
        self.buffer.drain(..end);
        Ok(Some(head))
    }

    fn body_stage(&self, head: Head) -> Result<Stage, HttpError> {
        let codings: Vec<String> = head
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .collect();
        if !codings.is_empty() {
            if head.minor == 0 {
                return Err(HttpError::new(400, "Transfer-Encoding in an HTTP/1.0 request"));
            }
            if codings != ["chunked"] {
                return Err(HttpError::new(
                    501,
                    format!(
                        "transfer coding {:?} is not supported (only chunked)",
                        codings.join(", ")
                    ),
                ));
            }
            if header(&head.headers, "content-length").is_some() {
                return Err(HttpError::new(400, "both Transfer-Encoding and Content-Length"));
            }
            return Ok(Stage::Chunked {
                head,
                body: Vec::new(),
                framing: 0,
                trailer: false,
            });
        }
        let mut lengths = head
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v);
        let len = match (lengths.next(), lengths.next()) {
            (None, _) => 0,
            (Some(_), Some(_)) => return Err(HttpError::new(400, "more than one Content-Length")),
            (Some(v), None) => {
                let digits = !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit());
                if !digits {
                    return Err(HttpError::new(400, "Content-Length is not a number"));
                }
                v.parse::<u64>()
                    .map_err(|_| HttpError::new(400, "Content-Length is not a number"))?
            }
        };
        if len > self.limits.max_body as u64 {
            return Err(HttpError::new(
                413,
                format!("request body exceeds the {}-byte limit", self.limits.max_body),
            ));
        }
        Ok(Stage::Length {
            head,
            len: len as usize,
        })
    }

    /// Decodes the chunks that have arrived, consuming their bytes. Returns whether
    /// the body is complete.
    fn chunks(&mut self, body: &mut Vec<u8>, framing: &mut usize, trailer: &mut bool) -> Result<bool, HttpError> {
        let bad = |m: &str| HttpError::new(400, format!("malformed chunked body: {m}"));
        let max_framing = self.limits.max_head;
        let mut at = 0;
        let result = loop {
            let rest = &self.buffer[at..];
            if *framing > max_framing {
                break Err(bad(
                    "more chunk framing than a request head may have (too many chunks, extensions or trailers)",
                ));
            }
            if *trailer {
                // Trailer fields, then an empty line; the fields are not kept.
                let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                    if rest.len() > max_framing {
                        break Err(bad("trailer too long"));
                    }
                    break Ok(false);
                };
                at += end + 2;
                *framing += end + 2;
                if end == 0 {
                    break Ok(true);
                }
                continue;
            }
            let Some(&first) = rest.first() else { break Ok(false) };
            if !first.is_ascii_hexdigit() {
                break Err(bad("a chunk size must start with a hex digit"));
            }
            let (n, size) = match httparse::parse_chunk_size(rest) {
                Ok(httparse::Status::Complete(x)) => x,
                Ok(httparse::Status::Partial) => {
                    if rest.len() > MAX_CHUNK_LINE {
                        break Err(bad("chunk size line too long"));
                    }
                    break Ok(false);
                }
                Err(_) => break Err(bad("invalid chunk size")),
            };
            if n > MAX_CHUNK_LINE || rest[..n - 1].contains(&b'\n') {
                break Err(bad("chunk size line too long or malformed"));
            }
            // Compared before any arithmetic: the size may be near u64::MAX.
            if size > (self.limits.max_body - body.len()) as u64 {
                break Err(HttpError::new(
                    413,
                    format!("request body exceeds the {}-byte limit", self.limits.max_body),
                ));
            }
            let size = size as usize;
            if size == 0 {
                at += n;
                *framing += n;
                *trailer = true;
                continue;
            }
            if rest.len() < n + size + 2 {
                break Ok(false);
            }
            if &rest[n + size..n + size + 2] != b"\r\n" {
                break Err(bad("chunk data not followed by CRLF"));
            }
            body.extend_from_slice(&rest[n..n + size]);
            at += n + size + 2;
            *framing += n + 2;
        };
        self.buffer.drain(..at);
        result
    }
}

/// The first value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A response as bytes on the wire: status line, headers, body.
pub fn encode_response(
    status: u16,
    content_type: &str,
    headers: &[(&'static str, String)],
    body: &[u8],
    head_only: bool,
    close: bool,
) -> Vec<u8> {
    use std::fmt::Write;
    let mut head = String::with_capacity(160);
    let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason(status));
    let _ = write!(
        head,
        "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        // Header values come from handlers; a line break would split the response.
        if !v.contains(['\r', '\n']) {
            let _ = write!(head, "{k}: {v}\r\n");
        }
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Where a request came from, for logs and limits.
pub type Remote = Option<SocketAddr>;

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParseLimits = ParseLimits {
        max_head: 256,
        max_headers: 8,
        max_body: 64,
    };

    /// Feeds `input` in pieces of `step` bytes, respecting `room`, and collects
    /// what comes out.
    fn run(input: &[u8], step: usize) -> Vec<Result<Parsed, HttpError>> {
        let mut p = Parser::new(LIMITS);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let take = step.min(p.room()).min(input.len() - at);
            p.buffer.extend_from_slice(&input[at..at + take]);
            at += take;
            loop {
                match p.poll() {
                    Ok(Some(x)) => out.push(Ok(x)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
            if take == 0 {
                return out;
            }
        }
    }

    fn req(r: &Result<Parsed, HttpError>) -> &RawRequest {
        match r {
            Ok(Parsed::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn pipelined_requests_with_length_and_chunked_bodies_in_any_pieces() {
        let input = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /ip/c1?check-alive=true HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            PUT /name/c1/10.32.0.2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nfqd\r\n6\r\nn=a.b.\r\n0\r\nX-T: 1\r\n\r\n\
            GET / HTTP/1.0\r\n\r\n";
        for step in [1, 2, 7, 1000] {
            let out = run(input, step);
            assert_eq!(out.len(), 4, "step {step}: {out:?}");
            assert_eq!(req(&out[0]).target, "/status");
            assert!(req(&out[0]).keep_alive);
            assert_eq!(req(&out[1]).body, b"hello");
            assert_eq!(req(&out[1]).target, "/ip/c1?check-alive=true");
            assert_eq!(req(&out[2]).body, b"fqdn=a.b.");
            assert!(!req(&out[3]).keep_alive, "HTTP/1.0 closes by default");
        }
    }

    #[test]
    fn limits_and_malformed_input_get_their_status() {
        let status = |input: &[u8]| match run(input, 3).pop() {
            Some(Err(e)) => e.status,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        };
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
        assert_eq!(status(long.as_bytes()), 431);
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(10_000));
        assert_eq!(status(endless.as_bytes()), 431, "a header line that never ends");
        let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), 431);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n"), 413);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n"),
            413
        );
        assert_eq!(status(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTP/3.0\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), 501);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY"),
            400
        );
        assert_eq!(status(b"G\x01T / HTTP/1.1\r\n\r\n"), 400);
        // Framing that a proxy could read differently is refused.
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello"), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\nab\r\n"),
            400,
            "an empty chunk size line"
        );
        // A size near u64::MAX is too large, never an overflow.
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nfffffffffffffffe\r\n"),
            413
        );
    }

    #[test]
    fn chunked_framing_and_trailers_are_bounded() {
        let status = |input: &[u8]| match run(input, 64).pop() {
            Some(Err(e)) => e.status,
            other => panic!("{other:?}"),
        };
        let endless_trailer = [
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".as_slice(),
            &b"X: y\r\n".repeat(200),
        ]
        .concat();
        assert_eq!(status(&endless_trailer), 400);
        let tiny_chunks = [
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
            &b"1;ext=aaaaaaaaaa\r\nx\r\n".repeat(60),
        ]
        .concat();
        assert_eq!(status(&tiny_chunks), 400, "framing beyond a head's worth");
        let mut p = Parser::new(LIMITS);
        p.buffer
            .extend_from_slice(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
        assert_eq!(p.poll(), Ok(None));
        assert!(p.buffer.is_empty(), "decoded chunks leave the buffer");
    }

    #[test]
    fn the_parser_never_takes_more_than_one_request_is_allowed() {
        let mut p = Parser::new(LIMITS);
        assert_eq!(p.room(), LIMITS.max_head + 1);
        p.buffer
            .extend_from_slice(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(p.poll(), Ok(None));
        assert!(p.in_body());
        assert_eq!(p.room(), 10, "exactly the body");
        p.buffer.extend_from_slice(b"0123456789");
        assert!(matches!(p.poll(), Ok(Some(Parsed::Request(_)))));
        assert!(!p.started());
    }

    #[test]
    fn expect_continue_is_answered_once_before_the_body() {
        let mut p = Parser::new(LIMITS);
        p.buffer
            .extend_from_slice(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(p.poll(), Ok(Some(Parsed::Continue)));
        assert_eq!(p.poll(), Ok(None));
        p.buffer.extend_from_slice(b"ok");
        assert!(matches!(p.poll(), Ok(Some(Parsed::Request(r))) if r.body == b"ok"));
        // Too large: refused, no 100.
        let mut p = Parser::new(LIMITS);
        p.buffer
            .extend_from_slice(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 99\r\n\r\n");
        assert_eq!(p.poll().unwrap_err().status, 413);
    }

    #[test]
    fn responses_are_framed_and_header_injection_is_dropped() {
        let r = encode_response(
            404,
            "application/json",
            &[("Allow", "GET".into()), ("X-Bad", "a\r\nSet-Cookie: x".into())],
            b"{}",
            false,
            true,
        );
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 2\r\n") && text.contains("Allow: GET\r\n"));
        assert!(!text.contains("Set-Cookie"));
        assert!(text.ends_with("Connection: close\r\n\r\n{}"));
        let head = encode_response(200, "text/plain", &[], b"abc", true, false);
        assert!(String::from_utf8(head).unwrap().ends_with("Content-Length: 3\r\n\r\n"));
    }
}
