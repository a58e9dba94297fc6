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
    let token = SasToken::parse(token.ok_or(SasError::Missing)?)?;
    let key = keys
        .iter()
        .find(|k| k.name == token.key_name)
        .ok_or_else(|| SasError::UnknownKey(token.key_name.clone()))?;
    let audience = token.verify(&key.key, now)?;
    if !audience.covers(path) || !key.covers(path) {
        return Err(SasError::WrongPath {
            audience: format!("{}/{}", audience.host, audience.path),
            path: path.to_owned(),
        });
    }
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
            },
            ServerKey {
                name: "send-a".into(),
                key: Secret::new(KEY),
                rights: vec![Right::Send],
                paths: vec!["team-a/*".into(), "shared".into()],
            },
            ServerKey {
                name: "root".into(),
                key: Secret::new(KEY),
                rights: vec![Right::Listen, Right::Send],
                paths: vec!["*".into()],
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
        assert_eq!(err, SasError::UnknownKey("nobody".into()));
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
}
