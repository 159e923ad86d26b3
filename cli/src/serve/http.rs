//! HTTP/1.1 for `ember serve`: one request read from a connection (head parsed by `httparse`,
//! body by `Content-Length` only), and responses written whole (`Content-Length`) or as a
//! chunked Server-Sent-Events stream. Keep-alive unless the client says `Connection: close`.
//!
//! Every size is bounded: the head ([`MAX_HEAD`], else 431), the header count (64), the body
//! (the server's `--max-body`, else 413, answered from `Content-Length` before any of the body
//! is read). A body sent with `Transfer-Encoding` (chunked) is refused with 411: OpenAI clients
//! send `Content-Length`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Most bytes of a request's head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// One request.
pub struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub body: Vec<u8>,
    /// The value of `Authorization`, if any.
    pub authorization: Option<String>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// A request that cannot be read: the status to answer (then the connection is closed).
#[derive(Debug)]
pub struct BadRequest {
    pub status: u16,
    pub message: String,
}

fn bad(status: u16, message: impl Into<String>) -> BadRequest {
    BadRequest {
        status,
        message: message.into(),
    }
}

/// How long a connection may take: idle between requests (then it is closed), and from the
/// first byte of a request to its last (then 408: a client dripping bytes holds no thread for
/// long). Checked whenever a read returns or times out (the socket's read timeout is short).
#[derive(Clone, Copy)]
pub struct Deadlines {
    pub idle: Duration,
    pub request: Duration,
}

/// Read the next request from `stream`; `buf` holds bytes already read past the previous
/// request (pipelining). `Ok(None)`: the client closed the connection (or was idle past
/// `limits.idle`) between requests.
pub fn read_request(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
    max_body: usize,
    limits: Deadlines,
) -> Result<Option<Request>, BadRequest> {
    let mut chunk = [0u8; 4096];
    let waiting = Instant::now();
    // When the request's first byte arrived (now, if pipelined bytes are already here).
    let mut started = (!buf.is_empty()).then(Instant::now);
    let too_slow = |started: Option<Instant>| started.is_some_and(|t| t.elapsed() > limits.request);
    let slow = || bad(408, "the request did not arrive in time");
    // The head.
    let (head_len, method, path, content_length, authorization, keep_alive, chunked) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
                return Err(bad(
                    431,
                    format!("the request head is over {MAX_HEAD} bytes"),
                ));
            }
            Ok(httparse::Status::Complete(n)) => {
                let version = req.version.unwrap_or(1);
                let mut content_length: Option<usize> = None;
                let (mut auth, mut close, mut keep, mut chunked) = (None, false, false, false);
                for h in req.headers.iter() {
                    let value = std::str::from_utf8(h.value)
                        .map_err(|_| bad(400, format!("header {} is not valid UTF-8", h.name)))?;
                    match h.name.to_ascii_lowercase().as_str() {
                        "content-length" => {
                            let n: usize = value
                                .trim()
                                .parse()
                                .map_err(|_| bad(400, format!("bad Content-Length {value:?}")))?;
                            if content_length.is_some_and(|c| c != n) {
                                return Err(bad(400, "conflicting Content-Length headers"));
                            }
                            content_length = Some(n);
                        }
                        "transfer-encoding" => chunked = true,
                        "authorization" => auth = Some(value.to_string()),
                        "connection" => {
                            let v = value.to_ascii_lowercase();
                            close |= v.contains("close");
                            keep |= v.contains("keep-alive");
                        }
                        _ => {}
                    }
                }
                let keep_alive = !close && (version == 1 || keep);
                break (
                    n,
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("/").to_string(),
                    content_length,
                    auth,
                    keep_alive,
                    chunked,
                );
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(bad(
                        431,
                        format!("the request head is over {MAX_HEAD} bytes"),
                    ));
                }
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(bad(431, format!("more than {MAX_HEADERS} headers")))
            }
            Err(e) => return Err(bad(400, format!("malformed HTTP request: {e}"))),
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(bad(400, "the connection closed inside a request head")),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                started.get_or_insert_with(Instant::now);
            }
            Err(e) if is_timeout(&e) && started.is_none() => {
                if waiting.elapsed() > limits.idle {
                    return Ok(None);
                }
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(None),
        }
        if too_slow(started) {
            return Err(slow());
        }
    };
    if chunked {
        return Err(bad(
            411,
            "send the body with Content-Length, not Transfer-Encoding",
        ));
    }
    let len = content_length.unwrap_or(0);
    if len > max_body {
        return Err(bad(
            413,
            format!("the request body is {len} bytes, more than the server's limit of {max_body}"),
        ));
    }
    buf.drain(..head_len);
    while buf.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(bad(400, "the connection closed inside the request body")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(bad(400, format!("reading the request body: {e}"))),
        }
        if too_slow(started) {
            return Err(slow());
        }
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    let path = path.split('?').next().unwrap_or("/").to_string();
    Ok(Some(Request {
        method,
        path,
        body,
        authorization,
        keep_alive,
    }))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Write a whole response. `extra`: more header lines, each ending in `\r\n`.
pub fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra: &str,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: {}\r\n{extra}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    stream.flush()
}

/// A Server-Sent-Events response in chunked encoding.
pub struct EventStream<'a> {
    stream: &'a mut TcpStream,
}

impl<'a> EventStream<'a> {
    /// Send the head.
    pub fn start(stream: &'a mut TcpStream, keep_alive: bool) -> io::Result<Self> {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             Transfer-Encoding: chunked\r\nConnection: {}\r\n\r\n",
            if keep_alive { "keep-alive" } else { "close" },
        );
        stream.write_all(head.as_bytes())?;
        stream.flush()?;
        Ok(EventStream { stream })
    }

    /// The connection (to check that the client is still there).
    pub fn stream(&self) -> &TcpStream {
        self.stream
    }

    /// Send `data: {data}` as one event.
    pub fn event(&mut self, data: &str) -> io::Result<()> {
        let payload = format!("data: {data}\n\n");
        let chunk = format!("{:x}\r\n{payload}\r\n", payload.len());
        self.stream.write_all(chunk.as_bytes())?;
        self.stream.flush()
    }

    /// End the stream (the last, empty chunk).
    pub fn finish(self) -> io::Result<()> {
        self.stream.write_all(b"0\r\n\r\n")?;
        self.stream.flush()
    }
}

/// Whether the peer has closed the connection (checked without blocking or consuming data).
pub fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let closed = match stream.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !is_timeout(&e) && e.kind() != io::ErrorKind::Interrupted,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ROOMY: Deadlines = Deadlines {
        idle: Duration::from_secs(60),
        request: Duration::from_secs(60),
    };

    /// Gives `bytes`, then times out forever (a client that stopped sending).
    struct Stalled<'a>(&'a [u8]);

    impl Read for Stalled<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = out.len().min(self.0.len()).min(3);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn slow_requests_time_out_and_idle_connections_close() {
        let quick = Deadlines {
            idle: Duration::from_millis(20),
            request: Duration::from_millis(20),
        };
        let mut buf = Vec::new();
        // Idle: closed quietly.
        let r = read_request(&mut Stalled(b""), &mut buf, 100, quick);
        assert!(matches!(r, Ok(None)));
        // Half a head, then nothing: 408.
        let r = read_request(&mut Stalled(b"GET / HTTP/1.1\r\nX: "), &mut buf, 100, quick);
        assert_eq!(r.err().map(|b| b.status), Some(408));
        // Half a body: 408.
        buf.clear();
        let head = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
        let r = read_request(&mut Stalled(head), &mut buf, 100, quick);
        assert_eq!(r.err().map(|b| b.status), Some(408));
        // Whole, three bytes a read: fine.
        buf.clear();
        let whole = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let r = read_request(&mut Stalled(whole), &mut buf, 100, ROOMY);
        assert_eq!(r.ok().flatten().map(|r| r.body), Some(b"abc".to_vec()));
    }

    /// What a request parsed to: method, path, body, keep-alive; or the error status.
    type Parsed = Result<(String, String, Vec<u8>, bool), u16>;

    fn read_all(bytes: &[u8], max_body: usize) -> Vec<Parsed> {
        let mut src = bytes;
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_request(&mut src, &mut buf, max_body, ROOMY) {
                Ok(Some(r)) => out.push(Ok((r.method, r.path, r.body, r.keep_alive))),
                Ok(None) => return out,
                Err(b) => {
                    out.push(Err(b.status));
                    return out;
                }
            }
        }
    }

    #[test]
    fn requests_bodies_pipelining_and_limits() {
        let two = b"POST /v1/completions?x=1 HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET /health HTTP/1.1\r\nConnection: close\r\n\r\n";
        let r = read_all(two, 100);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].as_ref().unwrap(),
            &(
                "POST".into(),
                "/v1/completions".into(),
                b"abcd".to_vec(),
                true
            )
        );
        assert_eq!(
            r[1].as_ref().unwrap(),
            &("GET".into(), "/health".into(), vec![], false)
        );
        // HTTP/1.0 closes unless asked to keep alive.
        assert!(
            !read_all(b"GET / HTTP/1.0\r\n\r\n", 10)[0]
                .as_ref()
                .unwrap()
                .3
        );
        let cases: [(&[u8], u16); 6] = [
            (b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 400),
            (b"\x00\x01 garbage\r\n\r\n", 400),
        ];
        for (bytes, status) in cases {
            assert_eq!(
                read_all(bytes, 10),
                [Err(status)],
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(read_all(long.as_bytes(), 10), [Err(431)]);
        let many: String = (0..100).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(read_all(many.as_bytes(), 10), [Err(431)]);
        // A connection closed mid-head is an error; closed between requests is not.
        assert_eq!(read_all(b"GET / HT", 10), [Err(400)]);
        assert!(read_all(b"", 10).is_empty());
    }

    proptest! {
        /// Any bytes: requests or an error status, never a panic, never a body over the limit.
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                 prefix in prop_oneof![Just(&b""[..]), Just(&b"POST / HTTP/1.1\r\n"[..]),
                                                       Just(&b"GET /x HTTP/1.1\r\nContent-Length: 3\r\n\r\n"[..])]) {
            let input = [prefix, &bytes[..]].concat();
            for (_, _, body, _) in read_all(&input, 64).into_iter().flatten() {
                prop_assert!(body.len() <= 64);
            }
        }
    }
}
