//! Property tests of the HTTP request parser (PROTOCOL.md §5): any cut, pipelining, and
//! limits enforced before the bytes past them arrive. Each property is checked against a model or an equivalent one-piece
//! computation, on generated inputs that include the hostile ones. The case counts keep the
//! file to a few seconds; `PROPTEST_CASES=100000` runs longer. Failure persistence is off: a
//! minimal failing input found here becomes a plain `#[test]`.

mod common;

use common::chunks::{config, cuts, mutated, reads};
use plex::internals::{MAX_HEAD, MAX_HEADERS, Parsed, Request, parse_request};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};

/// A well-formed request and what `parse_request` must make of it.
#[derive(Clone, Debug)]
struct HttpRequest {
    method: String,
    path: String,
    query: Option<String>,
    http_1_0: bool,
    /// Other headers, none of them one the parser acts on.
    headers: Vec<(String, String)>,
    authorization: Option<String>,
    /// `Connection` value, and whether it holds the `close` token.
    connection: Option<(&'static str, bool)>,
    expect_continue: bool,
    body: Vec<u8>,
    /// Send `Content-Length: 0` for an empty body.
    explicit_empty_length: bool,
    lf_only: bool,
}

impl HttpRequest {
    /// The bytes on the wire and the length of the head.
    fn bytes(&self) -> (Vec<u8>, usize) {
        let eol = if self.lf_only { "\n" } else { "\r\n" };
        let mut head = format!("{} {}", self.method, self.path);
        if let Some(q) = &self.query {
            head.push_str(&format!("?{q}"));
        }
        let version = if self.http_1_0 { 0 } else { 1 };
        head.push_str(&format!(" HTTP/1.{version}{eol}"));
        let mut headers: Vec<(String, String)> = self.headers.clone();
        if let Some(a) = &self.authorization {
            headers.insert(headers.len() / 2, ("Authorization".into(), a.clone()));
        }
        if let Some((c, _)) = self.connection {
            headers.push(("connection".into(), c.into()));
        }
        if self.expect_continue {
            headers.insert(0, ("Expect".into(), "100-continue".into()));
        }
        if !self.body.is_empty() || self.explicit_empty_length {
            headers.push(("Content-Length".into(), self.body.len().to_string()));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}{eol}"));
        }
        head.push_str(eol);
        let head_len = head.len();
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        (bytes, head_len)
    }

    fn expected(&self) -> OwnedRequest {
        let close = self.http_1_0 || self.connection.is_some_and(|(_, close)| close);
        OwnedRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone().unwrap_or_default(),
            authorization: self.authorization.clone().map(String::into_bytes),
            body: self.body.clone(),
            keep_alive: !close,
            len: self.bytes().0.len(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct OwnedRequest {
    method: String,
    path: String,
    query: String,
    authorization: Option<Vec<u8>>,
    body: Vec<u8>,
    keep_alive: bool,
    len: usize,
}

impl From<&Request<'_>> for OwnedRequest {
    fn from(r: &Request<'_>) -> Self {
        OwnedRequest {
            method: r.head.method.into(),
            path: r.head.path.into(),
            query: r.head.query.into(),
            authorization: r.head.authorization.map(<[u8]>::to_vec),
            body: r.body.to_vec(),
            keep_alive: r.head.keep_alive,
            len: r.len,
        }
    }
}

/// Header names the parser acts on; generated extra headers avoid them.
const SPECIAL: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "authorization",
    "connection",
    "expect",
];

fn http_request(max_body: usize) -> impl Strategy<Value = HttpRequest> {
    let method = prop_oneof![
        select(vec!["GET", "POST", "PUT", "DELETE", "OPTIONS"]).prop_map(str::to_owned),
        "[A-Z]{1,10}",
    ];
    let header = (
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}".prop_filter("parsed header", |n| {
            !SPECIAL.contains(&n.to_ascii_lowercase().as_str())
        }),
        "([!-~]([ !-~]{0,30}[!-~])?)?",
    );
    let connection = select(vec![
        ("close", true),
        ("keep-alive", false),
        ("Keep-Alive, CLOSE", true),
        ("upgrade", false),
        ("closed", false),
    ]);
    (
        (
            method,
            "/[A-Za-z0-9/._~%!$&'()*+,;=:@-]{0,40}",
            proptest::option::of("[A-Za-z0-9=&%+/?._-]{0,30}"),
        ),
        (any::<bool>(), vec(header, 0..8)),
        (
            proptest::option::of("Bearer [A-Za-z0-9._~+/-]{1,30}"),
            proptest::option::of(connection),
            any::<bool>(),
        ),
        (
            vec(any::<u8>(), 0..=max_body.min(64)),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (method, path, query),
                (http_1_0, headers),
                (authorization, connection, expect_continue),
                (body, explicit_empty_length, lf_only),
            )| HttpRequest {
                method,
                path,
                query,
                http_1_0,
                headers,
                authorization,
                connection,
                expect_continue,
                body,
                explicit_empty_length,
                lf_only,
            },
        )
}

/// A request line and headers without the end of the last line, for heads that do not end.
fn open_head() -> impl Strategy<Value = Vec<u8>> {
    http_request(0).prop_map(|r| {
        let (mut bytes, head_len) = r.bytes();
        bytes.truncate(head_len);
        while bytes.pop_if(|b| *b == b'\r' || *b == b'\n').is_some() {}
        bytes
    })
}

/// What the server keeps of an HTTP connection's input, like [`Stream`] for frames.
fn requests_in_reads(reads: &[&[u8]], max_body: usize) -> (Vec<OwnedRequest>, Option<u16>) {
    let mut input = Vec::new();
    let mut requests = Vec::new();
    for read in reads {
        input.extend_from_slice(read);
        let mut used = 0;
        loop {
            match parse_request(&input[used..], max_body) {
                Parsed::Complete(r) => {
                    used += r.len;
                    requests.push(OwnedRequest::from(&r));
                }
                Parsed::Partial(_) => break,
                Parsed::Invalid(status, _) => return (requests, Some(status)),
            }
        }
        input.drain(..used);
    }
    (requests, None)
}

/// What any verdict must respect, whatever the input.
fn check_verdict(input: &[u8], max_body: usize, parsed: &Parsed<'_>) -> Result<(), TestCaseError> {
    match parsed {
        Parsed::Complete(r) => {
            prop_assert!(r.len <= input.len());
            prop_assert!(r.body.len() <= max_body);
            let head_len = r.len - r.body.len();
            prop_assert!(head_len <= MAX_HEAD);
            prop_assert_eq!(&input[head_len..r.len], r.body);
            prop_assert!(!r.head.path.contains('?'));
        }
        // Waiting for more never means holding more than a head and a body within the limits.
        Parsed::Partial(_) => prop_assert!(input.len() <= MAX_HEAD + max_body),
        Parsed::Invalid(status, _) => prop_assert!([400, 411, 413, 431].contains(status)),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_request_is_partial_at_every_cut_until_complete(request in http_request(64)) {
        let (bytes, head_len) = request.bytes();
        for cut in 0..bytes.len() {
            match parse_request(&bytes[..cut], 64) {
                Parsed::Partial(None) => prop_assert!(cut < head_len, "cut at {}", cut),
                Parsed::Partial(Some(head)) => {
                    // The head alone is enough to route the request and see what it expects.
                    prop_assert!(cut >= head_len, "cut at {}", cut);
                    prop_assert_eq!(head.expects_continue, request.expect_continue);
                    prop_assert_eq!(head.content_length, request.body.len());
                    prop_assert_eq!(head.path, request.path.as_str());
                }
                other => prop_assert!(false, "cut at {}: {:?}", cut, other),
            }
        }
        match parse_request(&bytes, 64) {
            Parsed::Complete(r) => prop_assert_eq!(OwnedRequest::from(&r), request.expected()),
            other => prop_assert!(false, "{:?} for {:?}", other, String::from_utf8_lossy(&bytes)),
        }
    }

    #[test]
    fn pipelined_requests_parse_back_to_back_in_any_chunking(
        requests in vec(http_request(64), 1..6),
        cuts in cuts(),
    ) {
        let bytes: Vec<u8> = requests.iter().flat_map(|r| r.bytes().0).collect();
        let want: Vec<OwnedRequest> = requests.iter().map(HttpRequest::expected).collect();
        let mut rest = &bytes[..];
        for expected in &want {
            match parse_request(rest, 64) {
                Parsed::Complete(r) => {
                    prop_assert_eq!(&OwnedRequest::from(&r), expected);
                    rest = &rest[r.len..];
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
        prop_assert_eq!(parse_request(rest, 64), Parsed::Partial(None));
        prop_assert_eq!(requests_in_reads(&reads(&bytes, &cuts), 64), (want, None));
    }

    #[test]
    fn any_bytes_get_a_bounded_verdict_that_more_bytes_do_not_change(
        input in prop_oneof![
            vec(any::<u8>(), 0..300),
            mutated(http_request(64).prop_map(|r| r.bytes().0)),
            (open_head(), vec(any::<u8>(), 0..MAX_HEAD + 100)).prop_map(|(h, t)| [h, t].concat()),
        ],
        max_body in prop_oneof![0usize..100, Just(1 << 20)],
        split in any::<Index>(),
    ) {
        let parsed = parse_request(&input, max_body);
        check_verdict(&input, max_body, &parsed)?;
        let prefix = &input[..split.index(input.len() + 1)];
        let early = parse_request(prefix, max_body);
        check_verdict(prefix, max_body, &early)?;
        // The server re-parses on each read, so a verdict must not depend on the chunking.
        match early {
            Parsed::Complete(r) => prop_assert_eq!(parsed, Parsed::Complete(r)),
            Parsed::Invalid(..) => {
                prop_assert!(matches!(parsed, Parsed::Invalid(..)), "{:?}", parsed)
            }
            Parsed::Partial(_) => {}
        }
    }

    #[test]
    fn a_head_past_the_limit_is_refused_not_buffered(
        start in open_head(),
        filler in 1usize..=MAX_HEADERS,
        pad in 0usize..300,
        complete in any::<bool>(),
    ) {
        // Headers that keep a valid head growing past MAX_HEAD, with room left in MAX_HEADERS
        // only when `filler` is small.
        let mut head = start;
        let value_len = MAX_HEAD / filler + pad;
        let mut i = 0;
        while head.len() <= MAX_HEAD {
            head.extend_from_slice(format!("\r\nX-Fill-{i}: {}", "v".repeat(value_len)).as_bytes());
            i += 1;
        }
        if complete {
            head.extend_from_slice(b"\r\n\r\n");
        }
        prop_assert!(matches!(parse_request(&head, 1024), Parsed::Invalid(431, _)));
        // Exactly at the limit it may still be partial (or already too many headers), never
        // complete.
        let at_limit = parse_request(&head[..MAX_HEAD], 1024);
        prop_assert!(
            matches!(
                at_limit,
                Parsed::Partial(None) | Parsed::Invalid(431, _)
            ),
            "{:?}", at_limit
        );
        prop_assert!(matches!(parse_request(&head[..MAX_HEAD + 1], 1024), Parsed::Invalid(431, _)));
    }

    #[test]
    fn a_body_over_the_limit_is_refused_before_it_arrives(
        request in http_request(0),
        max_body in 0usize..1000,
        over in 1usize..1000,
        body_sent in 0usize..100,
    ) {
        let (bytes, head_len) = request.bytes();
        let mut head = bytes[..head_len].to_vec();
        let eol = if request.lf_only { "\n" } else { "\r\n" };
        let blank = head.len() - eol.len();
        head.truncate(blank);
        let declared = max_body + over;
        head.extend_from_slice(format!("Content-Length: {declared}{eol}{eol}").as_bytes());
        if !request.body.is_empty() || request.explicit_empty_length {
            // The generated request already declared 0: a conflicting length is a 400.
            prop_assert!(matches!(parse_request(&head, max_body), Parsed::Invalid(400, _)));
        } else {
            head.extend(std::iter::repeat_n(b'b', body_sent));
            prop_assert!(matches!(parse_request(&head, max_body), Parsed::Invalid(413, _)));
        }
    }
}
