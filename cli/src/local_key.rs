//! The API key a command sends to an api: the one given, else the dev stack's key file, but
//! only to an api on this machine.

use std::path::Path;

/// Where `switchyard dev` writes its key.
pub(crate) const DEV_KEY_FILE: &str = ".switchyard/dev-api-key";

/// The key to send: `--api-key` (or its variable, `key_var`), else the dev stack's key file if present —
/// but only to an api on this machine ([`is_loopback_url`]): the local dev key is never sent to
/// a remote server.
pub(crate) fn resolve_key(given: Option<String>, api_url: &str, dev_key_file: &Path, key_var: &str) -> Option<String> {
    if let Some(key) = given.map(|k| k.trim().to_string()).filter(|k| !k.is_empty()) {
        return Some(key);
    }
    let dev_key = std::fs::read_to_string(dev_key_file).ok().map(|k| k.trim().to_string()).filter(|k| !k.is_empty())?;
    if is_loopback_url(api_url) {
        return Some(dev_key);
    }
    eprintln!("note: not sending {} to {api_url}, which is not on this machine; pass --api-key or set {key_var}", dev_key_file.display());
    None
}

/// Whether `api_url`'s host is this machine's loopback: `localhost`, 127.0.0.0/8 or `::1` (also
/// as `::ffff:127.x.y.z`). Anything else — other names, even ones that resolve to 127.0.0.1, and
/// a URL that does not parse — is not.
pub(crate) fn is_loopback_url(api_url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(api_url).ok().and_then(|url| url.host_str().map(str::to_string)) else {
        return false;
    };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&host);
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|ip| ip.is_loopback()),
        Err(_) => host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_falls_back_to_the_dev_key_file_for_a_local_api_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dev-api-key");
        let local = "http://127.0.0.1:8080/v1";
        assert_eq!(resolve_key(None, local, &file, "OPENAI_API_KEY"), None);
        std::fs::write(&file, "sy-dev-key\n").unwrap();
        assert_eq!(resolve_key(None, local, &file, "OPENAI_API_KEY").as_deref(), Some("sy-dev-key"));
        assert_eq!(resolve_key(None, "http://localhost:8080/v1", &file, "OPENAI_API_KEY").as_deref(), Some("sy-dev-key"));
        assert_eq!(resolve_key(None, "http://[::1]:8080/v1", &file, "OPENAI_API_KEY").as_deref(), Some("sy-dev-key"));
        assert_eq!(resolve_key(Some("sk-given".into()), local, &file, "OPENAI_API_KEY").as_deref(), Some("sk-given"));
        assert_eq!(resolve_key(Some(String::new()), local, &file, "OPENAI_API_KEY").as_deref(), Some("sy-dev-key"));
        // Never to a remote api; a key given explicitly goes anywhere.
        for remote in ["https://api.openai.com/v1", "http://10.0.0.5:8080/v1", "http://localhost.example.com/v1", "not a url"] {
            assert_eq!(resolve_key(None, remote, &file, "OPENAI_API_KEY"), None, "{remote}");
            assert_eq!(resolve_key(Some(String::new()), remote, &file, "OPENAI_API_KEY"), None, "{remote}");
        }
        assert_eq!(resolve_key(Some("sk-given".into()), "https://api.openai.com/v1", &file, "OPENAI_API_KEY").as_deref(), Some("sk-given"));
    }

    #[test]
    fn loopback_urls() {
        for local in [
            "http://127.0.0.1:8080/v1",
            "http://127.1.2.3/v1",
            "http://127.1:8080/v1",
            "https://LOCALHOST/v1",
            "http://localhost./v1",
            "http://user:pw@localhost:1/v1",
            "http://[::1]:8080/v1",
            "http://[0:0:0:0:0:0:0:1]/v1",
            "http://[::ffff:127.0.0.1]/v1",
        ] {
            assert!(is_loopback_url(local), "{local}");
        }
        for remote in [
            "https://api.openai.com/v1",
            "http://128.0.0.1/v1",
            "http://0.0.0.0:8080/v1",
            "http://10.0.0.1/v1",
            "http://[::2]/v1",
            "http://[::ffff:10.0.0.1]/v1",
            "http://localhost.example.com/v1",
            "http://evil-localhost/v1",
            "http://127.0.0.1.nip.io/v1",
            "http://example.com/127.0.0.1/v1",
            "http://example.com?host=localhost",
            "127.0.0.1:8080",
            "",
        ] {
            assert!(!is_loopback_url(remote), "{remote}");
        }
    }
}
