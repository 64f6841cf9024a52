//! Rules for the names tunloom accepts from configuration and APIs: domain names,
//! container ids, interface names. A leaf module: it depends on nothing else in the
//! crate, so config, model and faces can all share one definition of each rule.

/// `name` as an absolute domain name (trailing dot, lower case) if it is one: labels
/// of letters, digits and hyphens (and `_`, as in service names), 1–63 bytes each, not
/// starting or ending with a hyphen, 253 bytes in all.
pub fn normalize_fqdn(name: &str) -> Option<String> {
    let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if n.is_empty() || n.len() > 253 {
        return None;
    }
    let ok = n.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    ok.then(|| format!("{n}."))
}

/// What a container id may be, said the way API clients read it.
pub const CONTAINER_ID_RULE: &str = "container id must be 1 to 256 characters without whitespace or '/'";

/// Whether `id` is a container id: 1 to 256 characters, no whitespace, control
/// characters or '/'. Ids are compared exactly as given.
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.chars().any(|c| c.is_whitespace() || c == '/' || c.is_control())
}

/// Whether `name` is a usable network interface name: 1 to 15 bytes (IFNAMSIZ − 1)
/// of letters, digits, `-`, `_` and `.`, and not `.` or `..`. (The kernel takes more,
/// but `%` makes it pick a name of its own, and `:` is an alias label.)
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Whether `name` is printable: no control characters (a NUL byte included).
pub fn printable(name: &str) -> bool {
    !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqdns_are_normalized() {
        assert_eq!(
            normalize_fqdn("MyApp.Weave.Local").as_deref(),
            Some("myapp.weave.local.")
        );
        assert_eq!(normalize_fqdn("a.b.").as_deref(), Some("a.b."));
        for bad in ["", ".", "a..b", "-a.b", "a-.b", "a b.c", &"x".repeat(64)] {
            assert_eq!(normalize_fqdn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn container_ids_and_interface_names() {
        assert!(valid_container_id("c1") && valid_container_id(&"x".repeat(256)));
        for bad in ["", "a b", "a/b", "a\tb", "a\u{7}", &"x".repeat(257)] {
            assert!(!valid_container_id(bad), "{bad:?}");
        }
        assert!(valid_ifname("tl0") && valid_ifname("abcdefghijklmno") && valid_ifname("tl-a.1_x"));
        for bad in ["", "a/b", "a b", "a\0", "abcdefghijklmnop", "tl%d", "eth0:1", ".", ".."] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
        assert!(printable("gw-1 (rack 4)") && !printable("gw\0") && !printable("a\nb"));
    }
}
