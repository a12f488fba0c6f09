//! `[acme]`: issuers, challenges, trusted roots and retry timing.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::check::Checker;
use super::raw::{RawAcme, RawIssuer};
use super::{Acme, ChallengeKind, Eab, Issuer, LETSENCRYPT_PRODUCTION, LETSENCRYPT_STAGING};

impl Checker<'_> {
    pub(super) fn acme(
        &mut self,
        raw: &RawAcme,
        http_on: bool,
        https_on: bool,
        used: bool,
    ) -> Acme {
        let single = RawIssuer {
            directory: raw.directory.clone(),
            eab_kid: raw.eab_kid.clone(),
            eab_hmac_key: raw.eab_hmac_key.clone(),
            profile: raw.profile.clone(),
        };
        let has_single = single.directory.is_some()
            || single.eab_kid.is_some()
            || single.eab_hmac_key.is_some()
            || single.profile.is_some();
        let issuers = if raw.issuers.is_empty() {
            vec![self.issuer("acme", &single)]
        } else {
            if has_single {
                let span = raw.directory.as_ref().map(|d| d.span());
                self.issue(
                    span,
                    "acme.directory",
                    "give the issuer either in [acme] or as [[acme.issuer]] entries, not both"
                        .into(),
                );
            }
            raw.issuers
                .iter()
                .enumerate()
                .map(|(i, r)| self.issuer(&format!("acme.issuer[{i}]"), r.get_ref()))
                .collect()
        };
        let mut challenges = Vec::new();
        match &raw.challenges {
            None => {
                if http_on {
                    challenges.push(ChallengeKind::Http01);
                }
                if https_on {
                    challenges.push(ChallengeKind::TlsAlpn01);
                }
            }
            Some(list) => {
                for c in list.get_ref() {
                    let (kind, needs, listener) = match c.get_ref().as_str() {
                        "http-01" => (ChallengeKind::Http01, http_on, "server.http"),
                        "tls-alpn-01" => (ChallengeKind::TlsAlpn01, https_on, "server.https"),
                        other => {
                            self.issue(Some(c.span()), "acme.challenges", format!("{other:?} is not a challenge usher answers; allowed: \"http-01\", \"tls-alpn-01\""));
                            continue;
                        }
                    };
                    if !needs {
                        self.issue(
                            Some(c.span()),
                            "acme.challenges",
                            format!("{:?} needs {listener}, which is \"off\"", c.get_ref()),
                        );
                    } else if !challenges.contains(&kind) {
                        challenges.push(kind);
                    }
                }
            }
        }
        if used && challenges.is_empty() {
            let span = raw.challenges.as_ref().map(|c| c.span());
            self.issue(span, "acme.challenges", "no usable challenge: ACME sites need server.http (http-01) or server.https (tls-alpn-01)".into());
        }
        let ca_roots: Vec<PathBuf> = raw
            .ca_roots
            .as_ref()
            .map(|l| l.get_ref().iter().map(|p| self.root_file(p)).collect())
            .unwrap_or_default();
        let retry_initial = self.duration(
            &raw.retry_initial,
            "acme.retry_initial",
            Duration::from_secs(60),
        );
        let retry_max = self.duration(
            &raw.retry_max,
            "acme.retry_max",
            Duration::from_secs(6 * 3600),
        );
        if retry_max < retry_initial {
            let span = raw.retry_max.as_ref().map(|r| r.span());
            self.issue(
                span,
                "acme.retry_max",
                "is shorter than acme.retry_initial".into(),
            );
        }
        Acme {
            email: raw.email.as_ref().map(|e| e.get_ref().clone()),
            ca_roots,
            challenges,
            issuers,
            retry_initial,
            retry_max,
        }
    }

    fn root_file(&mut self, p: &Spanned<String>) -> PathBuf {
        let path = self.base.join(p.get_ref());
        if let Err(e) = std::fs::read(&path) {
            self.issue(
                Some(p.span()),
                "acme.ca_roots",
                format!("cannot read {}: {e}", path.display()),
            );
        }
        path
    }

    fn issuer(&mut self, key: &str, raw: &RawIssuer) -> Issuer {
        let directory = match raw
            .directory
            .as_ref()
            .map(|d| (d.get_ref().as_str(), d.span()))
        {
            None | Some(("production", _)) => LETSENCRYPT_PRODUCTION.to_owned(),
            Some(("staging", _)) => LETSENCRYPT_STAGING.to_owned(),
            Some((url, _)) if url.starts_with("https://") => url.to_owned(),
            Some((url, span)) => {
                self.issue(
                    Some(span),
                    format!("{key}.directory"),
                    format!(
                        "{url:?} is not an https:// directory URL, \"production\" or \"staging\""
                    ),
                );
                String::new()
            }
        };
        let eab = match (&raw.eab_kid, &raw.eab_hmac_key) {
            (None, None) => None,
            (Some(kid), Some(hmac)) => match decode_base64url(hmac.get_ref()) {
                Some(hmac_key) if !hmac_key.is_empty() => Some(Eab {
                    kid: kid.get_ref().clone(),
                    hmac_key,
                }),
                _ => {
                    self.issue(
                        Some(hmac.span()),
                        format!("{key}.eab_hmac_key"),
                        "is not base64url (the form CAs hand out)".into(),
                    );
                    None
                }
            },
            (kid, hmac) => {
                let span = kid
                    .as_ref()
                    .map(|k| k.span())
                    .or(hmac.as_ref().map(|h| h.span()));
                self.issue(
                    span,
                    format!("{key}.eab_kid"),
                    "give both eab_kid and eab_hmac_key".into(),
                );
                None
            }
        };
        Issuer {
            directory,
            eab,
            profile: raw.profile.as_ref().map(|p| p.get_ref().clone()),
        }
    }
}

/// Decodes base64url, with or without padding (also accepts standard base64 characters).
fn decode_base64url(s: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for c in s.trim().trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode_base64url;

    #[test]
    fn base64url() {
        assert_eq!(decode_base64url("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64url("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64url("-_-_").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(decode_base64url("a b").is_none());
    }
}
