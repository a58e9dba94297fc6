//! Who may do what: the check every upgrade goes through, against the `[relay.server]`
//! keys (`config::ServerKey`: name, secret, rights, path patterns), built on `sas`
//! (lenient audience, constant-time compare).

use crate::config::ServerKey;
use crate::relay::sas::{self, Right, SasError, SasToken};

/// What a verified token allows, for logging and for the control channel's lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The key that signed the token (a name, never the secret).
    pub key_name: String,
    /// Unix seconds at which the token expires.
    pub expiry: u64,
}

/// The token a request carries: the header's, else the `sb-hc-token` query value
/// (decoded once). An empty header is no token: it must not hide one in the query.
pub fn token_of<'a>(header: Option<&'a str>, query: Option<&'a str>) -> Option<&'a str> {
    header.filter(|t| !t.trim().is_empty()).or(query)
}

/// Checks `token` (a header value, or the `sb-hc-token` query value decoded once) for
/// `right` on entity `path`. Errors map to 401 (missing, forged, expired) or 403 (valid
/// but not for this path or action) through [`SasError::status`].
pub fn authorize(
    keys: &[ServerKey],
    token: Option<&str>,
    path: &str,
    right: Right,
    now: u64,
) -> Result<Grant, SasError> {
    let (key, token, audience) = verified(keys, token, now)?;
    covered(&audience, path)?;
    in_scope(key, key.covers(path), path)?;
    granted(key, &token, right)
}

/// A sender's check. Its path is `ENTITY[/SUFFIX]`: the token must cover that path (its
/// audience may name the namespace, the entity or the whole path), and the key's `paths`
/// must cover the Hybrid Connection the relay delivers it to, `entity` (the longest
/// prefix with a listener). Checking the key against the whole path instead let a key
/// for `team-a/alice` reach the listener of `team-a`, and refused a key for `debug` the
/// sender `debug/5678` of its own listener. With no listener (`entity` is `None`) the key
/// must cover the path or one of its prefixes, so the 404 that follows tells nothing to a
/// key with no business there.
pub fn authorize_sender(
    keys: &[ServerKey],
    token: Option<&str>,
    path: &str,
    entity: Option<&str>,
    now: u64,
) -> Result<Grant, SasError> {
    let (key, token, audience) = verified(keys, token, now)?;
    covered(&audience, path)?;
    match entity {
        Some(entity) => in_scope(key, key.covers(entity), entity)?,
        None => in_scope(
            key,
            crate::relay::protocol::path_prefixes(path).any(|p| key.covers(p)),
            path,
        )?,
    }
    granted(key, &token, Right::Send)
}

/// The key that signed `token`, the parsed token and the audience it verified for: 401
/// for a token missing, malformed, of an unknown key, forged or expired.
fn verified<'k>(
    keys: &'k [ServerKey],
    token: Option<&str>,
    now: u64,
) -> Result<(&'k ServerKey, SasToken, sas::Audience), SasError> {
    let token = SasToken::parse(token.ok_or(SasError::Missing)?)?;
    let key = keys
        .iter()
        .find(|k| k.name == token.key_name)
        .ok_or_else(|| SasError::UnknownKey(sas::shown_key_name(&token.key_name)))?;
    let audience = token.verify(&key.key, now)?;
    Ok((key, token, audience))
}

/// 403 unless the token's audience covers `path`.
fn covered(audience: &sas::Audience, path: &str) -> Result<(), SasError> {
    if audience.covers(path) {
        return Ok(());
    }
    Err(SasError::WrongPath {
        audience: format!("{}/{}", audience.host, audience.path),
        path: path.to_owned(),
    })
}

/// 403 naming the key unless `covers` (whether its paths cover `path`).
fn in_scope(key: &ServerKey, covers: bool, path: &str) -> Result<(), SasError> {
    if covers {
        return Ok(());
    }
    Err(SasError::OutOfScope {
        key_name: key.name.clone(),
        path: path.to_owned(),
    })
}

/// 403 unless the key has `right`; else the grant.
fn granted(key: &ServerKey, token: &SasToken, right: Right) -> Result<Grant, SasError> {
    if !key.rights.contains(&right) {
        return Err(SasError::MissingRight {
            key_name: key.name.clone(),
            right,
        });
    }
    Ok(Grant {
        key_name: key.name.clone(),
        expiry: token.expiry,
    })
}

/// Unix seconds now.
pub fn now() -> u64 {
    sas::unix_now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM=";
    const NOW: u64 = 1_800_000_000;

    fn keys() -> Vec<ServerKey> {
        vec![
            ServerKey {
                name: "listen".into(),
                key: Secret::new(KEY),
                rights: vec![Right::Listen],
                paths: vec!["*".into()],
                max_connections: None,
            },
            ServerKey {
                name: "send-a".into(),
                key: Secret::new(KEY),
                rights: vec![Right::Send],
                paths: vec!["team-a/*".into(), "shared".into()],
                max_connections: None,
            },
            ServerKey {
                name: "root".into(),
                key: Secret::new(KEY),
                rights: vec![Right::Listen, Right::Send],
                paths: vec!["*".into()],
                max_connections: None,
            },
        ]
    }

    fn token(uri: &str, name: &str, key: &str, expiry: u64) -> String {
        sas::sign(uri, name, &Secret::new(key), expiry)
            .expect("short key")
            .expose()
            .to_owned()
    }

    #[test]
    fn decisions() {
        let ok = |uri: &str, name: &str| token(uri, name, KEY, NOW + 60);
        let forged = ok("http://h/hc/", "listen").replace("sig=", "sig=AA");
        // (name, token, path, right, expected key name or status)
        type Case<'a> = (
            &'a str,
            Option<String>,
            &'a str,
            Right,
            Result<&'a str, u16>,
        );
        let cases: Vec<Case> = vec![
            ("no token", None, "hc", Right::Listen, Err(401)),
            (
                "empty token",
                Some(String::new()),
                "hc",
                Right::Listen,
                Err(401),
            ),
            (
                "not SAS",
                Some("Bearer abc".into()),
                "hc",
                Right::Listen,
                Err(401),
            ),
            (
                "no sig",
                Some("SharedAccessSignature sr=x&se=1&skn=listen".into()),
                "hc",
                Right::Listen,
                Err(401),
            ),
            (
                "bad se",
                Some("SharedAccessSignature sr=x&sig=a&se=soon&skn=listen".into()),
                "hc",
                Right::Listen,
                Err(401),
            ),
            ("forged", Some(forged), "hc", Right::Listen, Err(401)),
            (
                "garbage",
                Some("nonsense".into()),
                "hc",
                Right::Listen,
                Err(401),
            ),
            (
                "dotnet audience",
                Some(ok("http://h/hc/", "listen")),
                "hc",
                Right::Listen,
                Ok("listen"),
            ),
            (
                "hyco-ws audience",
                Some(ok("http://h:9/hc", "listen")),
                "hc",
                Right::Listen,
                Ok("listen"),
            ),
            (
                "namespace token",
                Some(ok("http://h/", "root")),
                "x/y",
                Right::Send,
                Ok("root"),
            ),
            (
                "other path",
                Some(ok("http://h/hc", "listen")),
                "hc2",
                Right::Listen,
                Err(403),
            ),
            (
                "under path",
                Some(ok("http://h/hc", "listen")),
                "hc/sub",
                Right::Listen,
                Ok("listen"),
            ),
            (
                "send key listens",
                Some(ok("http://h/shared", "send-a")),
                "shared",
                Right::Listen,
                Err(403),
            ),
            (
                "send key sends",
                Some(ok("http://h/shared", "send-a")),
                "shared",
                Right::Send,
                Ok("send-a"),
            ),
            (
                "key path pattern",
                Some(ok("http://h/", "send-a")),
                "team-a/x",
                Right::Send,
                Ok("send-a"),
            ),
            (
                "outside key paths",
                Some(ok("http://h/", "send-a")),
                "team-b/x",
                Right::Send,
                Err(403),
            ),
            (
                "unknown key",
                Some(ok("http://h/hc", "nobody")),
                "hc",
                Right::Listen,
                Err(401),
            ),
            (
                "bad signature",
                Some(token("http://h/hc", "listen", "other", NOW + 60)),
                "hc",
                Right::Listen,
                Err(401),
            ),
            (
                "expired",
                Some(token("http://h/hc", "listen", KEY, NOW - 1)),
                "hc",
                Right::Listen,
                Err(401),
            ),
            (
                "expires now",
                Some(token("http://h/hc", "listen", KEY, NOW)),
                "hc",
                Right::Listen,
                Err(401),
            ),
            (
                "prefix but not a segment",
                Some(ok("http://h/hc/", "listen")),
                "hcx",
                Right::Listen,
                Err(403),
            ),
            (
                "sb:// namespace audience",
                Some(ok("sb://h/", "listen")),
                "anything/at/all",
                Right::Listen,
                Ok("listen"),
            ),
            (
                "audience case and port",
                Some(ok("http://h:1/Hc/", "listen")),
                "hc",
                Right::Listen,
                Ok("listen"),
            ),
            (
                "path case and slashes",
                Some(ok("http://h:1/Hc/", "listen")),
                "/HC/",
                Right::Listen,
                Ok("listen"),
            ),
            (
                "deep under path",
                Some(ok("http://h:1/Hc/", "listen")),
                "hc/suffix/more",
                Right::Listen,
                Ok("listen"),
            ),
        ];
        for (name, tok, path, right, want) in cases {
            let got = authorize(&keys(), tok.as_deref(), path, right, NOW);
            let got = got
                .as_ref()
                .map(|g| g.key_name.as_str())
                .map_err(|e| e.status());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn an_unknown_key_is_named() {
        let tok = token("http://h/hc/", "nobody", KEY, NOW + 60);
        let err = authorize(&keys(), Some(&tok), "hc", Right::Listen, NOW).expect_err("unknown");
        assert_eq!(err, SasError::UnknownKey("\"nobody\"".into()));
        assert_eq!(err.status(), 401);
    }

    #[test]
    fn grant_carries_the_expiry() {
        let tok = token("http://h/hc", "listen", KEY, NOW + 99);
        let grant = authorize(&keys(), Some(&tok), "hc", Right::Listen, NOW).expect("valid");
        assert_eq!(
            grant,
            Grant {
                key_name: "listen".into(),
                expiry: NOW + 99
            }
        );
    }

    /// A sender's key must cover the Hybrid Connection it reaches (`entity`), its token
    /// the path it asked for; with no listener, the key must cover a prefix of the path.
    #[test]
    fn a_sender_is_checked_against_the_hybrid_connection_it_reaches() {
        let ok = |uri: &str, name: &str| token(uri, name, KEY, NOW + 60);
        // (name, token, sender path, entity reached, expected key name or status)
        type Case<'a> = (
            &'a str,
            String,
            &'a str,
            Option<&'a str>,
            Result<&'a str, u16>,
        );
        let cases: Vec<Case> = vec![
            (
                "a suffix under the key's path",
                ok("http://h/shared", "send-a"),
                "shared/5678",
                Some("shared"),
                Ok("send-a"),
            ),
            (
                "a pattern covers the entity",
                ok("http://h/team-a/x", "send-a"),
                "team-a/x/5678",
                Some("team-a/x"),
                Ok("send-a"),
            ),
            (
                "the key names a path below the entity it would reach",
                ok("http://h/team-a", "send-a"),
                "team-a",
                Some("team-a"),
                Err(403),
            ),
            (
                "the token does not cover the path",
                ok("http://h/other", "send-a"),
                "shared/1",
                Some("shared"),
                Err(403),
            ),
            (
                "no listener, the key covers a prefix",
                ok("http://h/shared", "send-a"),
                "shared/1",
                None,
                Ok("send-a"),
            ),
            (
                "no listener, the key covers nothing of it",
                ok("http://h/", "send-a"),
                "team-b/1",
                None,
                Err(403),
            ),
            (
                "a listen-only key",
                ok("http://h/hc", "listen"),
                "hc/1",
                Some("hc"),
                Err(403),
            ),
            (
                "forged",
                ok("http://h/hc", "root").replace("sig=", "sig=AA"),
                "hc",
                Some("hc"),
                Err(401),
            ),
        ];
        for (name, tok, path, entity, want) in cases {
            let got = authorize_sender(&keys(), Some(&tok), path, entity, NOW);
            let got = got
                .as_ref()
                .map(|g| g.key_name.as_str())
                .map_err(|e| e.status());
            assert_eq!(got, want, "{name}");
        }
        let tok = ok("http://h/team-a", "send-a");
        let err = authorize_sender(&keys(), Some(&tok), "team-a", Some("team-a"), NOW)
            .expect_err("out of scope");
        assert_eq!(
            err.to_string(),
            "SAS key \"send-a\" may not reach Hybrid Connection \"team-a\": the key's paths in \
             [relay.server] do not cover it"
        );
    }
}
