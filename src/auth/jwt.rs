//! HS256 JWT verification for the `--auth jwt` mode: a client's token is a JWT (RFC 7519) signed
//! with the secret the server shares with the business service, and its `sub` claim is the uid.
//!
//! [`verify_hs256`] is pure (the clock is a parameter) and never panics, so the reactor can call
//! it inline for each `/auth/server`. It accepts only what a strict reading of RFC 7515/7519
//! allows for this one use:
//! - the compact form, three base64url parts **without padding**, at most [`MAX_TOKEN_LEN`] bytes;
//! - header `alg` exactly `"HS256"` (`none`, other algorithms and a missing `alg` are refused);
//!   `typ`, if present, must be `JWT` (case-insensitive, `application/` prefix allowed), so a
//!   token minted as some other type by the same key holder is not taken as a login; any `crit`
//!   is refused, since we understand no extensions (RFC 7515 §4.1.11);
//! - HMAC-SHA256 over `header.payload` compared in constant time, before the payload is parsed;
//! - `sub` a non-empty string, `exp` required and `now < exp`, `nbf` optional and `now >= nbf`.
//!   Dates are NumericDates: integer or fractional seconds. There is no leeway: the issuer and
//!   the server are expected to share a clock, and an exact rule is easy to test and explain.
//!
//! Other claims (`iat`, `iss`, `aud`, `jti`...) are ignored. Duplicate members in the header or
//! payload are refused rather than resolved.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{Number, Value};
use sha2::Sha256;

/// Longest token accepted, in bytes; longer ones are refused before any decoding or hashing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why a token was refused. `Display` gives a log-ready reason that never quotes the token, any
/// part of it, or the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// The configured secret is empty: every token is refused rather than trusting a known key.
    NoSecret,
    /// Longer than [`MAX_TOKEN_LEN`].
    TooLong,
    /// Not a well-formed compact JWT; the text says which part is wrong.
    Malformed(&'static str),
    /// Header `alg` missing or anything but `HS256`.
    UnsupportedAlg,
    /// Header `typ` other than `JWT`, or a `crit` header.
    UnsupportedHeader(&'static str),
    /// The signature does not match the secret.
    BadSignature,
    /// `sub` missing, not a string, or empty.
    MissingSubject,
    /// `exp` missing or not a number.
    MissingExpiry,
    /// `now >= exp`.
    Expired,
    /// `now < nbf`.
    NotYetValid,
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSecret => f.write_str("no JWT secret configured"),
            Self::TooLong => write!(f, "JWT longer than {MAX_TOKEN_LEN} bytes"),
            Self::Malformed(why) => write!(f, "malformed JWT: {why}"),
            Self::UnsupportedAlg => f.write_str("JWT alg is not HS256"),
            Self::UnsupportedHeader(why) => write!(f, "unsupported JWT header: {why}"),
            Self::BadSignature => f.write_str("JWT signature does not match"),
            Self::MissingSubject => f.write_str("JWT sub is missing or not a non-empty string"),
            Self::MissingExpiry => f.write_str("JWT exp is missing or not a number"),
            Self::Expired => f.write_str("JWT expired"),
            Self::NotYetValid => f.write_str("JWT not yet valid (nbf)"),
        }
    }
}

impl std::error::Error for JwtError {}

// Derived structs (not `Value`) so that serde refuses duplicate members instead of letting the
// last one win.
#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    typ: Option<String>,
    crit: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
}

/// Verifies an HS256 JWT against `secret` at time `now_unix_secs` and returns its `sub`, the uid.
///
/// `secret` is used as raw bytes (not base64-decoded). The token is taken as is: surrounding
/// whitespace makes it malformed. See the module documentation for the exact rules.
pub fn verify_hs256(token: &str, secret: &[u8], now_unix_secs: u64) -> Result<String, JwtError> {
    if secret.is_empty() {
        return Err(JwtError::NoSecret);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };

    let header: Header = parse_object(
        header_b64,
        "header is not unpadded base64url",
        "header is not a JSON object",
    )?;
    if header.alg.as_deref() != Some("HS256") {
        return Err(JwtError::UnsupportedAlg);
    }
    if let Some(typ) = &header.typ {
        let typ = typ.strip_prefix("application/").unwrap_or(typ);
        if !typ.eq_ignore_ascii_case("JWT") {
            return Err(JwtError::UnsupportedHeader("typ is not JWT"));
        }
    }
    if header.crit.is_some() {
        return Err(JwtError::UnsupportedHeader(
            "crit extensions are not supported",
        ));
    }

    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| JwtError::Malformed("signature is not unpadded base64url"))?;
    // The signing input is the token's own text up to the second dot, not a re-encoding.
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    let mac = Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| JwtError::NoSecret)? // unreachable: HMAC takes keys of any length
        .chain_update(signing_input.as_bytes());
    // Constant-time comparison (and a length check) inside `verify_slice`.
    mac.verify_slice(&signature)
        .map_err(|_| JwtError::BadSignature)?;

    let claims: Claims = parse_object(
        payload_b64,
        "payload is not unpadded base64url",
        "payload is not a JSON object",
    )?;
    let uid = match claims.sub {
        Some(Value::String(sub)) if !sub.is_empty() => sub,
        _ => return Err(JwtError::MissingSubject),
    };
    let Some(Value::Number(exp)) = &claims.exp else {
        return Err(JwtError::MissingExpiry);
    };
    if reached(now_unix_secs, exp) {
        return Err(JwtError::Expired);
    }
    match &claims.nbf {
        None => {}
        Some(Value::Number(nbf)) if reached(now_unix_secs, nbf) => {}
        Some(Value::Number(_)) => return Err(JwtError::NotYetValid),
        Some(_) => return Err(JwtError::Malformed("nbf is not a number")),
    }
    Ok(uid)
}

/// Decodes one unpadded base64url part and parses it as a JSON object into `T`; the two
/// messages say which part failed and how.
fn parse_object<T: DeserializeOwned>(
    b64: &str,
    not_base64: &'static str,
    not_object: &'static str,
) -> Result<T, JwtError> {
    let json = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| JwtError::Malformed(not_base64))?;
    // serde would also fill a struct from a JSON array; RFC 7519 requires an object.
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(JwtError::Malformed(not_object));
    }
    serde_json::from_slice(&json).map_err(|_| JwtError::Malformed(not_object))
}

/// Whether the NumericDate `date` (integer or fractional seconds) is at or before `now`.
fn reached(now: u64, date: &Number) -> bool {
    if let Some(date) = date.as_u64() {
        now >= date
    } else if date.is_i64() {
        true // negative: before the epoch
    } else {
        // Fractional, or an integer beyond u64 that serde_json keeps as f64. Converting `now`
        // loses nothing for any date before the year 285 million.
        date.as_f64().is_some_and(|date| now as f64 >= date)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"test-secret-of-reasonable-length!";
    const NOW: u64 = 1_700_000_000;
    const HS256_JWT: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Signs already-encoded parts, so tests can put odd text in them.
    fn sign_parts(header_b64: &str, payload_b64: &str, secret: &[u8]) -> String {
        let input = format!("{header_b64}.{payload_b64}");
        let tag = Hmac::<Sha256>::new_from_slice(secret)
            .unwrap()
            .chain_update(input.as_bytes())
            .finalize()
            .into_bytes();
        format!("{input}.{}", b64(tag))
    }

    fn sign(header: &str, payload: &str, secret: &[u8]) -> String {
        sign_parts(&b64(header), &b64(payload), secret)
    }

    fn token(payload: &str) -> String {
        sign(HS256_JWT, payload, SECRET)
    }

    fn verify(token: &str) -> Result<String, JwtError> {
        verify_hs256(token, SECRET, NOW)
    }

    fn malformed(result: Result<String, JwtError>) -> bool {
        matches!(result, Err(JwtError::Malformed(_)))
    }

    /// Flips one bit of decoded byte `byte` in dot-separated part `part`, and re-encodes.
    fn flip(token: &str, part: usize, byte: usize) -> String {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut bytes = URL_SAFE_NO_PAD.decode(&parts[part]).unwrap();
        bytes[byte] ^= 0x01;
        parts[part] = b64(bytes);
        parts.join(".")
    }

    #[test]
    fn valid_token_gives_the_subject() {
        let t = token(r#"{"sub":"user-7","exp":1700000060}"#);
        assert_eq!(verify(&t).as_deref(), Ok("user-7"));
        // Other claims are ignored; nbf in the past or exactly now is fine.
        let t = token(r#"{"iss":"x","sub":"ü 7","iat":1,"nbf":1700000000,"exp":1700000001}"#);
        assert_eq!(verify(&t).as_deref(), Ok("ü 7"));
    }

    #[test]
    fn typ_is_optional_and_compared_case_insensitively() {
        for header in [
            r#"{"alg":"HS256"}"#,
            r#"{"typ":"jwt","alg":"HS256","kid":"k1"}"#,
            r#"{"alg":"HS256","typ":"application/JWT"}"#,
        ] {
            let t = sign(header, r#"{"sub":"u","exp":1700000060}"#, SECRET);
            assert_eq!(verify(&t).as_deref(), Ok("u"), "{header}");
        }
        for header in [
            r#"{"alg":"HS256","typ":"at+jwt"}"#,
            r#"{"alg":"HS256","typ":"JWS"}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
        ] {
            let t = sign(header, r#"{"sub":"u","exp":1700000060}"#, SECRET);
            assert!(
                matches!(verify(&t), Err(JwtError::UnsupportedHeader(_))),
                "{header}"
            );
        }
    }

    #[test]
    fn expiry_is_exclusive_and_has_no_leeway() {
        let t = token(r#"{"sub":"u","exp":1700000001}"#);
        assert_eq!(verify_hs256(&t, SECRET, NOW).as_deref(), Ok("u"));
        assert_eq!(verify_hs256(&t, SECRET, NOW + 1), Err(JwtError::Expired));
        assert_eq!(verify_hs256(&t, SECRET, u64::MAX), Err(JwtError::Expired));
        let t = token(r#"{"sub":"u","exp":1699999000}"#);
        assert_eq!(verify(&t), Err(JwtError::Expired));
        let t = token(r#"{"sub":"u","exp":-1}"#);
        assert_eq!(verify(&t), Err(JwtError::Expired));
    }

    #[test]
    fn not_before_is_inclusive() {
        let t = token(r#"{"sub":"u","nbf":1700000001,"exp":1700000060}"#);
        assert_eq!(verify(&t), Err(JwtError::NotYetValid));
        assert_eq!(verify_hs256(&t, SECRET, NOW + 1).as_deref(), Ok("u"));
        let t = token(r#"{"sub":"u","nbf":-5,"exp":1700000060}"#);
        assert_eq!(verify(&t).as_deref(), Ok("u"));
    }

    #[test]
    fn numeric_dates_may_be_fractional_or_huge() {
        let t = token(r#"{"sub":"u","exp":1700000000.5}"#);
        assert_eq!(verify(&t).as_deref(), Ok("u"));
        assert_eq!(verify_hs256(&t, SECRET, NOW + 1), Err(JwtError::Expired));
        let t = token(r#"{"sub":"u","exp":1.7e9}"#);
        assert_eq!(verify(&t), Err(JwtError::Expired));
        let t = token(r#"{"sub":"u","nbf":1700000000.5,"exp":1e300}"#);
        assert_eq!(verify(&t), Err(JwtError::NotYetValid));
        assert_eq!(verify_hs256(&t, SECRET, NOW + 1).as_deref(), Ok("u"));
        let t = token(r#"{"sub":"u","exp":99999999999999999999999}"#);
        assert_eq!(verify(&t).as_deref(), Ok("u"));
    }

    #[test]
    fn wrong_secret_or_any_flipped_byte_is_a_bad_signature() {
        let t = token(r#"{"sub":"u","exp":1700000060}"#);
        assert_eq!(
            verify_hs256(&t, b"another-secret", NOW),
            Err(JwtError::BadSignature)
        );
        // A bit of the signature, or of the payload (`"sub":"u"` becomes `"sub":"t"`).
        assert_eq!(verify(&flip(&t, 2, 0)), Err(JwtError::BadSignature));
        assert_eq!(verify(&flip(&t, 2, 31)), Err(JwtError::BadSignature));
        let tampered = flip(&t, 1, 8);
        assert!(
            URL_SAFE_NO_PAD
                .decode(tampered.split('.').nth(1).unwrap())
                .unwrap()
                .starts_with(br#"{"sub":"t""#)
        );
        assert_eq!(verify(&tampered), Err(JwtError::BadSignature));
        let sig_start = t.rfind('.').unwrap() + 1;
        // A signature of the wrong length.
        let short = format!("{}.{}", &t[..sig_start - 1], b64([0u8; 31]));
        assert_eq!(verify(&short), Err(JwtError::BadSignature));
        let empty = format!("{}.", &t[..sig_start - 1]);
        assert_eq!(verify(&empty), Err(JwtError::BadSignature));
    }

    #[test]
    fn only_hs256_is_accepted() {
        let payload = b64(r#"{"sub":"u","exp":1700000060}"#);
        // The classic attack: alg none and no signature.
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(verify(&none), Err(JwtError::UnsupportedAlg));
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"alg":null}"#,
            r#"{"typ":"JWT"}"#,
            r#"{}"#,
        ] {
            // Even correctly HMAC-SHA256-signed: the header must say HS256.
            let t = sign(header, r#"{"sub":"u","exp":1700000060}"#, SECRET);
            assert_eq!(verify(&t), Err(JwtError::UnsupportedAlg), "{header}");
        }
        let t = sign(r#"{"alg":7}"#, r#"{"sub":"u","exp":1700000060}"#, SECRET);
        assert!(malformed(verify(&t)));
    }

    #[test]
    fn structural_garbage_is_malformed() {
        let t = token(r#"{"sub":"u","exp":1700000060}"#);
        let four = format!("{t}.{}", b64("x"));
        for bad in [
            "",
            ".",
            "..",
            "...",
            "no-dots-at-all",
            "two.parts",
            &four,
            "!!!.???.***",
            " ",
            &format!(" {t}"),
            &format!("{t}\n"),
        ] {
            assert!(malformed(verify(bad)), "{bad:?}");
        }
    }

    #[test]
    fn padding_and_the_standard_alphabet_are_refused() {
        // A payload whose encoding needs padding, signed over the padded text.
        let payload = r#"{"sub":"u","exp":1700000060}"#;
        let padded = base64::engine::general_purpose::URL_SAFE.encode(payload);
        assert!(padded.ends_with('='));
        assert!(malformed(verify(&sign_parts(
            &b64(HS256_JWT),
            &padded,
            SECRET
        ))));
        // A padded signature.
        let t = token(payload);
        assert!(malformed(verify(&format!("{t}="))));
        // Non-canonical last symbol: the signature's final character carries 2 unused bits.
        let mut noncanonical = t[..t.len() - 1].to_owned();
        noncanonical.push('B'); // 000001: a set unused bit
        assert!(malformed(verify(&noncanonical)));
        // '-' and '_' of base64url written as '+' and '/' of standard base64.
        let sub = (0..3)
            .map(|pad| format!(r#"{{"sub":"{}~~~?>","exp":1700000060}}"#, "x".repeat(pad)))
            .find(|p| b64(p).contains(['-', '_']))
            .expect("some alignment encodes to - or _");
        let standard = b64(&sub).replace('-', "+").replace('_', "/");
        assert!(malformed(verify(&sign_parts(
            &b64(HS256_JWT),
            &standard,
            SECRET
        ))));
        let url = sign_parts(&b64(HS256_JWT), &b64(&sub), SECRET);
        assert!(verify(&url).is_ok());
    }

    #[test]
    fn header_and_payload_must_be_json_objects() {
        let claims = r#"{"sub":"u","exp":1700000060}"#;
        for header in ["not json", r#"["HS256"]"#, "", r#"{"alg":"HS256""#, "null"] {
            assert!(malformed(verify(&sign(header, claims, SECRET))), "{header}");
        }
        for payload in [
            "not json",
            "",
            r#"["u",1700000060]"#,
            r#"{"sub":"u","exp":1700000060"#,
            r#"{"sub":"u","exp":1700000060} trailing"#,
            "\u{0}",
        ] {
            assert!(malformed(verify(&token(payload))), "{payload}");
        }
        // Duplicate members are refused, not resolved.
        let dup = token(r#"{"sub":"admin","sub":"u","exp":1700000060}"#);
        assert!(malformed(verify(&dup)));
        let dup = sign(
            r#"{"alg":"none","alg":"HS256"}"#,
            r#"{"sub":"u","exp":1700000060}"#,
            SECRET,
        );
        assert!(malformed(verify(&dup)));
    }

    #[test]
    fn sub_and_exp_are_required_with_the_right_types() {
        for payload in [
            r#"{"exp":1700000060}"#,
            r#"{"sub":"","exp":1700000060}"#,
            r#"{"sub":7,"exp":1700000060}"#,
            r#"{"sub":null,"exp":1700000060}"#,
            r#"{"sub":["u"],"exp":1700000060}"#,
        ] {
            assert_eq!(
                verify(&token(payload)),
                Err(JwtError::MissingSubject),
                "{payload}"
            );
        }
        for payload in [
            r#"{"sub":"u"}"#,
            r#"{"sub":"u","exp":"1700000060"}"#,
            r#"{"sub":"u","exp":null}"#,
            r#"{"sub":"u","exp":true}"#,
        ] {
            assert_eq!(
                verify(&token(payload)),
                Err(JwtError::MissingExpiry),
                "{payload}"
            );
        }
        let t = token(r#"{"sub":"u","exp":1700000060,"nbf":"0"}"#);
        assert!(malformed(verify(&t)));
    }

    #[test]
    fn size_is_bounded_before_any_work() {
        // Grow a valid token one padding character at a time: the last one within the limit
        // passes, the first one past it is refused.
        let with_pad = |n: usize| {
            token(&format!(
                r#"{{"sub":"u","exp":1700000060,"pad":"{}"}}"#,
                "x".repeat(n)
            ))
        };
        let mut n = (MAX_TOKEN_LEN - with_pad(0).len()) * 3 / 4 - 8;
        while with_pad(n + 1).len() <= MAX_TOKEN_LEN {
            n += 1;
        }
        let (within, over) = (with_pad(n), with_pad(n + 1));
        assert!(within.len() > MAX_TOKEN_LEN - 3 && over.len() > MAX_TOKEN_LEN);
        assert_eq!(verify(&within).as_deref(), Ok("u"));
        assert_eq!(verify(&over), Err(JwtError::TooLong));
        assert_eq!(verify(&"a".repeat(1 << 20)), Err(JwtError::TooLong));
    }

    #[test]
    fn an_empty_secret_refuses_everything() {
        let t = sign(HS256_JWT, r#"{"sub":"u","exp":1700000060}"#, b"");
        assert_eq!(verify_hs256(&t, b"", NOW), Err(JwtError::NoSecret));
    }

    // Produced independently with Python's standard library (hmac, hashlib, base64, json):
    //   si = b64(json(header)) + "." + b64(json(payload))
    //   si + "." + b64(hmac.new(secret, si, sha256).digest())
    // The first is jwt.io's well-known example, which Python reproduces byte for byte.
    const JWT_IO_SECRET: &[u8] = b"your-256-bit-secret";
    const JWT_IO_EXAMPLE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
        eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
        SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    // The same claims plus "nbf":1516239022 and "exp":2000000000, same header and secret.
    const JWT_IO_RESIGNED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
        eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyLCJuYmYiOjE1MTYyMzkwMjIsImV4cCI6MjAwMDAwMDAwMH0.\
        nnW0sFZGZTrBByWB0CevpQOxn1Tnhcmt_tVcRJijlSo";

    #[test]
    fn tokens_made_elsewhere_verify() {
        // jwt.io's example has no exp: its signature checks out, then the missing exp refuses it.
        assert_eq!(
            verify_hs256(JWT_IO_EXAMPLE, JWT_IO_SECRET, NOW),
            Err(JwtError::MissingExpiry)
        );
        assert_eq!(
            verify_hs256(JWT_IO_EXAMPLE, SECRET, NOW),
            Err(JwtError::BadSignature)
        );
        let t = JWT_IO_RESIGNED;
        assert_eq!(
            verify_hs256(t, JWT_IO_SECRET, NOW).as_deref(),
            Ok("1234567890")
        );
        assert_eq!(
            verify_hs256(t, JWT_IO_SECRET, 1_516_239_021),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            verify_hs256(t, JWT_IO_SECRET, 2_000_000_000),
            Err(JwtError::Expired)
        );
        assert_eq!(
            verify_hs256(t, b"your-256-bit-secreT", NOW),
            Err(JwtError::BadSignature)
        );
        // And our own signing agrees with Python's.
        let ours = sign(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#,
            JWT_IO_SECRET,
        );
        assert_eq!(ours, JWT_IO_EXAMPLE);
    }

    #[test]
    fn messages_never_quote_the_token_or_the_secret() {
        let secret = b"s3cr3t-value";
        let header = r#"{"alg":"HS256","typ":"EVIL-TYP"}"#;
        let cases = [
            sign(header, r#"{"sub":"EVIL-SUB","exp":1}"#, secret),
            sign(HS256_JWT, r#"{"sub":"EVIL-SUB","exp":1}"#, secret),
            sign(HS256_JWT, r#"{"sub":"EVIL-SUB","exp":1}"#, b"other"),
            sign(r#"{"alg":"EVIL-ALG"}"#, "{}", secret),
            "EVIL-TOKEN".to_owned(),
        ];
        for t in &cases {
            let message = verify_hs256(t, secret, NOW).unwrap_err().to_string();
            for needle in ["s3cr3t", "EVIL", t.as_str()] {
                assert!(!message.contains(needle), "{message}");
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in ".{0,200}", now in any::<u64>()) {
            let _ = verify_hs256(&s, SECRET, now);
        }

        #[test]
        fn arbitrary_parts_never_panic(
            h in proptest::collection::vec(any::<u8>(), 0..64),
            p in proptest::collection::vec(any::<u8>(), 0..64),
            now in any::<u64>(),
        ) {
            let t = token(&String::from_utf8_lossy(&p));
            let _ = verify_hs256(&t, SECRET, now);
            let t = sign(&String::from_utf8_lossy(&h), r#"{"sub":"u","exp":1}"#, SECRET);
            let _ = verify_hs256(&t, SECRET, now);
        }

        #[test]
        fn any_one_byte_change_is_refused(i in 0usize..1000, c in 0x21u8..0x7f) {
            let t = token(r#"{"sub":"u","exp":1700000060}"#);
            let i = i % t.len();
            prop_assume!(t.as_bytes()[i] != c);
            let mut bytes = t.into_bytes();
            bytes[i] = c;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(verify(&changed).is_err());
        }
    }
}
