//! phttpd's HTTP/1.1 request-head parser (RFC 9112), strict and pure: no I/O,
//! no allocation, every rule a typed error that maps to a status code.
//!
//! Rules (each has a unit test below):
//!
//! - **Lines** end in CRLF. A bare LF, or a CR not followed by LF, is a 400
//!   (RFC 9112 §2.2 lets a recipient accept a bare LF; phttpd does not, so
//!   no two parsers on a path can disagree about where a header ends).
//!   Empty lines (CRLF) before the request line are skipped (§2.2).
//! - **Request line**: `method SP request-target SP HTTP-version`, single
//!   spaces; the method is a token, the target is visible ASCII. Versions
//!   `HTTP/1.1` and `HTTP/1.0` are served; another `HTTP/x.y` is a 505;
//!   anything else a 400. Methods other than GET and POST are a 501.
//! - **Field lines**: `name ":" OWS value OWS`; the name is a token. No
//!   colon, whitespace before the colon (§5.1), an empty name, obs-fold (a
//!   line starting with SP or HTAB, §5.2) or a control byte in the value is
//!   a 400.
//! - **Content-Length** (RFC 9110 §8.6): one or more decimal digits, nothing
//!   else (no sign, no inner space). A comma list or repeated fields must
//!   all carry the same value; differing values are a 400. A value too large
//!   for a u64 reads as `u64::MAX` (the caller answers 413).
//! - **Transfer-Encoding** together with Content-Length is a 400 (§6.3: a
//!   smuggling vector); alone it is a 501 (phttpd reads no chunked bodies).
//! - **Host**: an HTTP/1.1 request without exactly one Host field is a 400
//!   (§3.2).
//! - **Connection**: `close` (or HTTP/1.0 without `keep-alive`) closes the
//!   connection after the response.
//!
//! A GET's body (Content-Length) is consumed and discarded by the server, so
//! it is never read as a second request.

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
}

/// A parsed request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The request target (origin form, as sent).
    pub target: &'a str,
    /// Minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub minor: u8,
    /// The body's length (0 without Content-Length).
    pub content_length: u64,
    /// Close the connection after the response.
    pub close: bool,
}

/// Why a request is refused; [`HttpError::status`] is the answer's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Malformed (400).
    #[error("bad request: {0}")]
    Bad(&'static str),
    /// The head is longer than the limit (431).
    #[error("request header too large")]
    HeaderTooLarge,
    /// The body is longer than the limit (413).
    #[error("request body too large")]
    BodyTooLarge,
    /// A method or transfer coding phttpd does not implement (501).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// An HTTP version other than 1.0 and 1.1 (505).
    #[error("HTTP version not supported")]
    Version,
}

impl HttpError {
    /// The status code that answers the error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Bad(_) => 400,
            HttpError::HeaderTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::NotImplemented(_) => 501,
            HttpError::Version => 505,
        }
    }
}

/// Bytes of empty lines (CRLF pairs) at the start of `buf`.
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    while buf.get(i..i + 2) == Some(b"\r\n") {
        i += 2;
    }
    i
}

/// Finds the end of a request head in `buf`: the index just past its
/// terminating empty line, `None` if not there yet. `from` is where new
/// bytes start (bytes before it were scanned by an earlier call). A bare LF
/// or a CR followed by anything but LF is an error.
pub fn head_end(buf: &[u8], from: usize) -> Result<Option<usize>, HttpError> {
    let lead = leading_empty_lines(buf);
    // Bytes past the head (a body) are not looked at. The byte before
    // `from` is looked at again: it may be a CR whose LF just came.
    let mut i = from.saturating_sub(1).max(lead);
    while i < buf.len() {
        match buf[i] {
            b'\n' => {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err(HttpError::Bad("bare LF"));
                }
                if i >= lead + 3 && &buf[i - 3..=i] == b"\r\n\r\n" {
                    return Ok(Some(i + 1));
                }
            }
            b'\r' if buf.get(i + 1).is_some_and(|&b| b != b'\n') => {
                return Err(HttpError::Bad("bare CR"))
            }
            _ => {}
        }
        i += 1;
    }
    Ok(None)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Field-value bytes: VCHAR, obs-text, SP, HTAB.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Parses a Content-Length field value: digits, or a comma list of equal
/// digit strings. Saturates at `u64::MAX`.
pub fn parse_content_length(v: &[u8]) -> Result<u64, HttpError> {
    let mut value = None;
    for part in v.split(|&b| b == b',') {
        let part = trim_ows(part);
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(HttpError::Bad("Content-Length is not a number"));
        }
        let n = part.iter().fold(0u64, |n, &d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        if value.is_some_and(|v| v != n) {
            return Err(HttpError::Bad("differing Content-Length values"));
        }
        value = Some(n);
    }
    value.ok_or(HttpError::Bad("empty Content-Length"))
}

/// True if the comma list `v` holds `token` (case-insensitive).
fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// Parses a complete request head (as [`head_end`] delimits it: leading
/// empty lines, the request line, field lines, the empty line).
pub fn parse_head(head: &[u8]) -> Result<Request<'_>, HttpError> {
    let head = &head[leading_empty_lines(head)..];
    let head = head
        .strip_suffix(b"\r\n\r\n")
        .ok_or(HttpError::Bad("head does not end in an empty line"))?;
    let mut lines = head.split(|&b| b == b'\n').map(|l| {
        // head_end guarantees CRLF endings; a stray byte is still refused.
        l.strip_suffix(b"\r").unwrap_or(l)
    });
    let line = lines.next().unwrap_or(b"");
    if line.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(HttpError::Bad("bare CR"));
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Bad(
            "request line is not METHOD SP TARGET SP VERSION",
        ));
    };
    if !is_token(method) {
        return Err(HttpError::Bad("method is not a token"));
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(HttpError::Bad("bad request target"));
    }
    let target = std::str::from_utf8(target).map_err(|_| HttpError::Bad("bad request target"))?;
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            return Err(HttpError::Version)
        }
        _ => return Err(HttpError::Bad("bad HTTP version")),
    };
    let mut content_length = None::<u64>;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    let mut close = minor == 0;
    for l in lines {
        if l.contains(&b'\r') {
            return Err(HttpError::Bad("bare CR"));
        }
        if matches!(l.first(), Some(b' ' | b'\t')) {
            return Err(HttpError::Bad("obsolete line folding"));
        }
        let colon = l
            .iter()
            .position(|&b| b == b':')
            .ok_or(HttpError::Bad("field line without a colon"))?;
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        if !is_token(name) {
            return Err(HttpError::Bad("field name is not a token"));
        }
        if !value.iter().all(|&b| is_field_byte(b)) {
            return Err(HttpError::Bad("control byte in a field value"));
        }
        let value = trim_ows(value);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::Bad("differing Content-Length fields"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(value, b"close") {
                close = true;
            } else if has_token(value, b"keep-alive") {
                close = false;
            }
        }
    }
    if transfer_encoding {
        return Err(if content_length.is_some() {
            HttpError::Bad("both Transfer-Encoding and Content-Length")
        } else {
            HttpError::NotImplemented("Transfer-Encoding")
        });
    }
    if minor == 1 && hosts != 1 {
        return Err(HttpError::Bad("HTTP/1.1 needs exactly one Host field"));
    }
    let method = match method {
        b"GET" => Method::Get,
        b"POST" => Method::Post,
        _ => return Err(HttpError::NotImplemented("method")),
    };
    Ok(Request {
        method,
        target,
        minor,
        content_length: content_length.unwrap_or(0),
        close,
    })
}

/// Where a request head in `buf` ends and what it says; `Ok(None)` until
/// the head is complete. `max_head` bounds the head (431 past it).
pub fn parse(buf: &[u8], max_head: usize) -> Result<Option<(usize, Request<'_>)>, HttpError> {
    match head_end(buf, 0)? {
        Some(end) if end > max_head => Err(HttpError::HeaderTooLarge),
        Some(end) => Ok(Some((end, parse_head(&buf[..end])?))),
        None if buf.len() > max_head => Err(HttpError::HeaderTooLarge),
        None => Ok(None),
    }
}

/// The fuzz targets' body (cargo-fuzz `http_head` and the stable
/// `http_fuzz` test): parses `data` whole and fed in pieces, and checks
/// what a parse promises. Panics on a broken promise.
pub fn fuzz_one(data: &[u8]) {
    let max = 1 << 16;
    let whole = head_end(data, 0);
    // Fed in pieces (cut points taken from the data itself), the end found
    // and the error raised are the same.
    let step = 1 + data.first().map_or(0, |&b| usize::from(b % 13));
    let mut fed = Ok(None);
    let mut n = 0;
    while n < data.len() {
        let m = (n + step).min(data.len());
        fed = head_end(&data[..m], n);
        if !matches!(fed, Ok(None)) {
            break;
        }
        n = m;
    }
    match (&whole, &fed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "incremental end differs"),
        (Err(_), Err(_)) => {}
        _ => panic!("whole {whole:?} vs fed {fed:?}"),
    }
    match parse(data, max) {
        Ok(Some((end, req))) => {
            assert!(end <= data.len() && end <= max);
            let head = &data[..end];
            assert!(head.ends_with(b"\r\n\r\n"));
            // No bare LF or CR in the head.
            for (i, &b) in head.iter().enumerate() {
                if b == b'\n' {
                    assert!(i > 0 && head[i - 1] == b'\r', "bare LF accepted");
                }
                if b == b'\r' {
                    assert_eq!(head.get(i + 1), Some(&b'\n'), "bare CR accepted");
                }
            }
            assert!(!req.target.is_empty());
            assert!(req.target.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            assert!(req.minor <= 1);
            // No field line starts with whitespace, and a Content-Length
            // field is digits (and commas, spaces) only.
            let text = &head[leading_empty_lines(head)..];
            for line in text.split(|&b| b == b'\n').skip(1) {
                assert!(
                    !matches!(line.first(), Some(b' ' | b'\t')),
                    "obs-fold accepted"
                );
                if line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:") {
                    assert!(
                        line[15..]
                            .iter()
                            .all(|b| b.is_ascii_digit() || b" \t,\r".contains(b)),
                        "odd Content-Length accepted"
                    );
                }
                if line.len() > 18 && line[..18].eq_ignore_ascii_case(b"transfer-encoding:") {
                    panic!("Transfer-Encoding accepted");
                }
            }
        }
        Ok(None) => assert!(data.len() <= max && matches!(whole, Ok(None))),
        Err(e) => {
            assert!(matches!(e.status(), 400 | 431 | 501 | 505));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Request<'_>, HttpError> {
        parse_head(s.as_bytes())
    }

    fn status(s: &str) -> u16 {
        match req(s) {
            Ok(_) => 200,
            Err(e) => e.status(),
        }
    }

    #[test]
    fn a_plain_get_and_post_parse() {
        let r = req("GET /obj/5 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.target, "/obj/5");
        assert_eq!((r.minor, r.content_length, r.close), (1, 0, false));
        let r = req("POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n").unwrap();
        assert_eq!((r.method, r.content_length), (Method::Post, 1024));
        let r = req("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(r.close, "HTTP/1.0 closes by default");
        let r = req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(!r.close);
        let r = req("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n").unwrap();
        assert!(r.close);
    }

    #[test]
    fn a_get_with_a_body_declares_it() {
        let r = req("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(r.content_length, 5);
    }

    #[test]
    fn content_length_is_digits_only() {
        for v in [
            "+5", "-1", " 5 5", "5a", "0x5", "", "5,", ",5", "5 ,6", "1e3", "５",
        ] {
            let s = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n");
            assert_eq!(status(&s), 400, "Content-Length: {v:?}");
        }
        assert_eq!(parse_content_length(b"5, 5"), Ok(5));
        assert!(parse_content_length(b"5, 6").is_err());
        assert_eq!(
            parse_content_length(b"99999999999999999999999"),
            Ok(u64::MAX)
        );
        assert_eq!(parse_content_length(b"007"), Ok(7));
    }

    #[test]
    fn differing_content_lengths_are_refused_equal_ones_not() {
        let two = |a: &str, b: &str| {
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {a}\r\nContent-Length: {b}\r\n\r\n"
            )
        };
        assert_eq!(status(&two("5", "6")), 400);
        assert_eq!(req(&two("5", "5")).unwrap().content_length, 5);
    }

    #[test]
    fn transfer_encoding_is_refused() {
        let te = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(te), 501);
        let both =
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(status(both), 400);
        let both = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ntransfer-encoding: identity\r\n\r\n";
        assert_eq!(status(both), 400);
    }

    #[test]
    fn field_lines_are_strict() {
        for f in [
            "NoColon",
            "Host : x",
            "Host\t: x",
            ": empty-name",
            " folded",
            "\tfolded",
            "Bad\x01Name: x",
            "X: a\x00b",
            "X: a\x7fb",
            "Na me: x",
        ] {
            let s = format!("GET / HTTP/1.1\r\nHost: x\r\n{f}\r\n\r\n");
            assert_eq!(status(&s), 400, "{f:?}");
        }
        // Obs-fold after a field line.
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n"),
            400
        );
    }

    #[test]
    fn obs_text_in_a_value_is_accepted() {
        let b = b"GET / HTTP/1.1\r\nHost: x\r\nX:\t a \xff\t\r\n\r\n";
        assert!(parse_head(b).is_ok());
    }

    #[test]
    fn the_request_line_is_strict() {
        for l in [
            "GET  / HTTP/1.1",
            "GET / HTTP/1.1 ",
            " GET / HTTP/1.1",
            "GET /",
            "GET / HTTP/1.1 extra",
            "GET\t/ HTTP/1.1",
            "G(T / HTTP/1.1",
            "GET / HTTP/1",
            "GET / http/1.1",
            "GET / HTTP/1.10",
            "",
        ] {
            let s = format!("{l}\r\nHost: x\r\n\r\n");
            assert_eq!(status(&s), 400, "{l:?}");
        }
        assert_eq!(status("GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
        assert_eq!(status("PUT / HTTP/1.1\r\nHost: x\r\n\r\n"), 501);
        assert_eq!(status("get / HTTP/1.1\r\nHost: x\r\n\r\n"), 501);
        assert_eq!(status("GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    }

    #[test]
    fn http_1_1_needs_one_host() {
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.0\r\n\r\n"), 200);
    }

    #[test]
    fn bare_lf_and_bare_cr_are_refused() {
        assert_eq!(
            head_end(b"GET / HTTP/1.1\nHost: x\n\n", 0),
            Err(HttpError::Bad("bare LF"))
        );
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n", 0),
            Err(HttpError::Bad("bare CR"))
        );
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n"), 400);
        // A CR at the end of what arrived so far may be followed by its LF.
        assert_eq!(head_end(b"GET / HTTP/1.1\r", 0), Ok(None));
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 15),
            Ok(Some(27))
        );
    }

    #[test]
    fn head_end_is_incremental() {
        let full = b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nBODY";
        let end = head_end(full, 0).unwrap().unwrap();
        assert_eq!(&full[end..], b"BODY");
        // A body's bytes are not the head's: a LF in them is fine.
        assert_eq!(head_end(b"GET / HTTP/1.0\r\n\r\n\n\r", 0), Ok(Some(18)));
        // Fed a byte at a time, the same end is found.
        let mut found = None;
        for n in 1..=full.len() {
            if let Some(e) = head_end(&full[..n], n - 1).unwrap() {
                found = Some(e);
                break;
            }
        }
        assert_eq!(found, Some(end));
        // Leading empty lines are skipped.
        let r = parse_head(&full[..end]).unwrap();
        assert_eq!(r.target, "/");
    }

    #[test]
    fn parse_bounds_the_head() {
        let long = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(100)
        );
        assert!(matches!(parse(long.as_bytes(), 1000), Ok(Some(_))));
        assert_eq!(parse(long.as_bytes(), 50), Err(HttpError::HeaderTooLarge));
        assert_eq!(
            parse(&long.as_bytes()[..60], 50),
            Err(HttpError::HeaderTooLarge)
        );
        assert_eq!(parse(&long.as_bytes()[..60], 1000), Ok(None));
    }
}
