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

/// Read the next request from `stream`; `buf` holds bytes already read past the previous
/// request (pipelining). `Ok(None)`: the client closed the connection (or was idle past the
/// read timeout) between requests.
pub fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max_body: usize,
) -> Result<Option<Request>, BadRequest> {
    let mut chunk = [0u8; 4096];
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
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() && is_timeout(&e) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(None),
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
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(bad(408, format!("reading the request body: {e}"))),
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
