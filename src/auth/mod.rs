//! Ready-made auth functions.

pub mod jwt;

/// The demo auth mode of the original's examples: the token itself, trimmed, is the uid if it
/// is 1–128 characters of `[A-Za-z0-9_.:@-]`. It trusts whatever a client says.
pub fn token_as_uid(token: &str) -> Option<String> {
    let uid = token.trim();
    let valid = (1..=128).contains(&uid.len())
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b));
    valid.then(|| uid.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_the_trimmed_uid_when_well_formed() {
        assert_eq!(
            token_as_uid(" user-7@x.y:z_ ").as_deref(),
            Some("user-7@x.y:z_")
        );
        assert_eq!(token_as_uid(&"a".repeat(128)).map(|u| u.len()), Some(128));
        for bad in ["", "   ", "a b", "ü", "a/b", &"a".repeat(129)] {
            assert_eq!(token_as_uid(bad), None, "{bad:?}");
        }
    }
}
