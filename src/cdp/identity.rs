//! What a session's pages say they are: the user agent string and the client hints
//! (`navigator.userAgentData`, `Sec-CH-UA*`) that go with it.
//!
//! Headless Chromium announces itself (`HeadlessChrome/…` in the string, a `HeadlessChrome`
//! brand in the shell's hints), and `--user-agent` changes the string only, leaving the
//! hints to contradict it. The multiplexer applies an [`Identity`] to every target with
//! `Emulation.setUserAgentOverride` ([`Identity::override_params`]); this module only derives
//! it from strings. Pure functions: it owns no state and must not touch I/O, the
//! multiplexer's tables or anything outside `serde_json`.
//!
//! What Chromium (156) does with it: a session without an override on the same page (every
//! client attaches one) does not undo the string or the hints, and a client's own override
//! wins; but `navigator.platform` is back to the browser's own on every new document once
//! a client is attached (`tests/it/identity.rs` pins both).

use serde::Serialize;
use serde_json::Value;

/// The characters and versions of Chromium's "GREASE" brand
/// (<https://wicg.github.io/ua-client-hints/#create-arbitrary-brands-section>).
const GREASE_CHARS: [char; 11] = [' ', '(', ':', '-', '.', '/', ')', ';', '=', '?', '_'];
const GREASE_VERSIONS: [&str; 3] = ["8", "99", "24"];

/// What every page of a session says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// `navigator.userAgent` and the `User-Agent` header.
    pub user_agent: String,
    /// `navigator.platform`.
    pub platform: &'static str,
    /// The client hints; `None` for a user agent that is not Chromium's (Chromium then
    /// reports no brands and sends no `Sec-CH-UA`).
    pub metadata: Option<Metadata>,
}

/// Emulation's `UserAgentMetadata`, as Chromium would derive it from the string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metadata {
    pub brands: Vec<Brand>,
    pub full_version_list: Vec<Brand>,
    pub full_version: String,
    pub platform: &'static str,
    pub platform_version: String,
    pub architecture: &'static str,
    pub model: String,
    pub mobile: bool,
    pub bitness: &'static str,
    pub wow64: bool,
}

/// One brand of `navigator.userAgentData.brands` (or of `fullVersionList`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Brand {
    pub brand: String,
    pub version: String,
}

impl Identity {
    /// The identity of a session: the user agent it asked for, or the browser's own
    /// (`Browser.getVersion`'s `result`) without the `Headless` mark.
    pub(crate) fn for_session(requested: Option<&str>, version: &Value) -> Option<Identity> {
        match requested {
            Some(ua) => Some(Identity::from_user_agent(ua)),
            None => {
                let own = version.get("userAgent").and_then(Value::as_str)?;
                Some(Identity::from_user_agent(&default_user_agent(own)))
            }
        }
    }

    /// The identity a page with user agent `ua` would have in a Chromium that sent it.
    pub(crate) fn from_user_agent(ua: &str) -> Identity {
        let os = System::of(ua);
        Identity {
            user_agent: ua.to_owned(),
            platform: os.navigator_platform(ua),
            metadata: chrome_version(ua).map(|full| metadata(ua, &os, full)),
        }
    }

    /// The `params` of `Emulation.setUserAgentOverride` (and `Network.`'s, for workers).
    pub(crate) fn override_params(&self) -> Value {
        let mut params = serde_json::json!({
            "userAgent": self.user_agent,
            "platform": self.platform,
        });
        if let Some(metadata) = &self.metadata
            && let Ok(metadata) = serde_json::to_value(metadata)
        {
            params["userAgentMetadata"] = metadata;
        }
        params
    }
}

/// The user agent a browser whose own is `own` should send: `HeadlessChrome/` becomes
/// `Chrome/` and the version is reduced to `MAJOR.0.0.0`, as Chrome sends it.
pub(crate) fn default_user_agent(own: &str) -> String {
    let ua = own.replace("HeadlessChrome/", "Chrome/");
    let Some(full) = chrome_version(&ua) else {
        return ua;
    };
    let major = full.split('.').next().unwrap_or(full);
    ua.replacen(
        &format!("Chrome/{full}"),
        &format!("Chrome/{major}.0.0.0"),
        1,
    )
}

/// The version after `Chrome/` (or `HeadlessChrome/`, not `FakeChrome/`), when it starts
/// with a number.
fn chrome_version(ua: &str) -> Option<&str> {
    let at = ua.match_indices("Chrome/").find_map(|(at, _)| {
        let before = &ua[..at];
        let word = !before.ends_with(|c: char| c.is_ascii_alphanumeric());
        (word || before.ends_with(" Headless") || before == "Headless").then_some(at)
    })? + "Chrome/".len();
    let rest = &ua[at..];
    let len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let version = rest[..len].trim_end_matches('.');
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then_some(version)
}

/// The operating system a user agent names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum System {
    Windows { version: String },
    Mac { version: String },
    Android { version: String, model: String },
    ChromeOS { version: String },
    Linux,
    Unknown,
}

impl System {
    fn of(ua: &str) -> System {
        if let Some(v) = after(ua, "Windows NT ") {
            System::Windows {
                version: dotted(v, '.'),
            }
        } else if let Some(v) = after(ua, "Android") {
            let v = v.trim_start();
            let model = ua
                .split_once("Android")
                .and_then(|(_, rest)| rest.split(')').next())
                .and_then(|inside| inside.split(';').nth(1))
                .map(|m| m.trim().to_owned())
                .unwrap_or_default();
            System::Android {
                version: dotted(v, '.'),
                model,
            }
        } else if let Some(v) = after(ua, "CrOS ") {
            let version = v.split_whitespace().nth(1).unwrap_or("").to_owned();
            System::ChromeOS {
                version: version.trim_end_matches([')', ';']).to_owned(),
            }
        } else if let Some(v) = after(ua, "Mac OS X ") {
            System::Mac {
                version: dotted(v, '_'),
            }
        } else if ua.contains("Macintosh") {
            System::Mac {
                version: String::new(),
            }
        } else if ua.contains("Linux") || ua.contains("X11") {
            System::Linux
        } else {
            System::Unknown
        }
    }

    /// `userAgentData.platform`.
    fn name(&self) -> &'static str {
        match self {
            System::Windows { .. } => "Windows",
            System::Mac { .. } => "macOS",
            System::Android { .. } => "Android",
            System::ChromeOS { .. } => "Chrome OS",
            System::Linux => "Linux",
            System::Unknown => "Unknown",
        }
    }

    /// `navigator.platform`, as each system's Chrome reports it.
    fn navigator_platform(&self, ua: &str) -> &'static str {
        let arm = is_arm(ua);
        match self {
            System::Windows { .. } => "Win32",
            System::Mac { .. } => "MacIntel",
            System::Android { .. } => "Linux armv81",
            System::ChromeOS { .. } | System::Linux | System::Unknown if arm => "Linux aarch64",
            System::ChromeOS { .. } | System::Linux | System::Unknown => "Linux x86_64",
        }
    }
}

/// The text after `marker` in `ua`, if `marker` occurs.
fn after<'a>(ua: &'a str, marker: &str) -> Option<&'a str> {
    ua.find(marker).map(|at| &ua[at + marker.len()..])
}

/// A version at the start of `text` whose parts are separated by `sep`, as three dotted
/// numbers (`10_15_7` → `10.15.7`, `10.0` → `10.0.0`); empty when there is none.
fn dotted(text: &str, sep: char) -> String {
    let len = text
        .find(|c: char| !(c.is_ascii_digit() || c == sep))
        .unwrap_or(text.len());
    let mut parts: Vec<&str> = text[..len].split(sep).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return String::new();
    }
    parts.resize(parts.len().max(3), "0");
    parts.join(".")
}

fn is_arm(ua: &str) -> bool {
    ua.contains("aarch64") || ua.contains("arm") || ua.contains("ARM")
}

/// The client hints Chromium `full` (its version) on `os` reports.
fn metadata(ua: &str, os: &System, full: &str) -> Metadata {
    let major = full.split('.').next().unwrap_or(full);
    let full = if full.contains('.') {
        full.to_owned()
    } else {
        format!("{full}.0.0.0")
    };
    let seed: usize = major.parse().unwrap_or(0);
    let grease_brand = format!(
        "Not{}A{}Brand",
        GREASE_CHARS[seed % GREASE_CHARS.len()],
        GREASE_CHARS[(seed + 1) % GREASE_CHARS.len()]
    );
    let grease_version = GREASE_VERSIONS[seed % GREASE_VERSIONS.len()];
    let brand = |brand: &str, version: &str| Brand {
        brand: brand.to_owned(),
        version: version.to_owned(),
    };
    // Chromium shuffles two brands by the seed's parity.
    let ordered = |a: Brand, b: Brand| {
        if seed.is_multiple_of(2) {
            vec![a, b]
        } else {
            vec![b, a]
        }
    };
    let brands = ordered(
        brand(&grease_brand, grease_version),
        brand("Chromium", major),
    );
    let full_version_list = ordered(
        brand(&grease_brand, &format!("{grease_version}.0.0.0")),
        brand("Chromium", &full),
    );
    let (platform_version, model, mobile) = match os {
        System::Windows { version } | System::Mac { version } | System::ChromeOS { version } => {
            (version.clone(), String::new(), false)
        }
        System::Android { version, model } => {
            (version.clone(), model.clone(), ua.contains("Mobile"))
        }
        System::Linux | System::Unknown => (String::new(), String::new(), false),
    };
    let (architecture, bitness) = match os {
        System::Android { .. } => ("", ""),
        _ if is_arm(ua) => ("arm", "64"),
        System::Windows { .. } if !(ua.contains("Win64") || ua.contains("WOW64")) => ("x86", "32"),
        _ => ("x86", "64"),
    };
    Metadata {
        brands,
        full_version_list,
        full_version: full,
        platform: os.name(),
        platform_version,
        architecture,
        model,
        mobile,
        bitness,
        wow64: ua.contains("WOW64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHELL: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.8078.129 Safari/537.36";
    const WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

    #[test]
    fn the_default_drops_headless_and_reduces_the_version() {
        assert_eq!(
            default_user_agent(SHELL),
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"
        );
        let headful = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";
        assert_eq!(default_user_agent(headful), headful);
        assert_eq!(default_user_agent("curl/8"), "curl/8");
        let fake = "Mozilla/5.0 (fake) FakeChrome/1.0";
        assert_eq!(default_user_agent(fake), fake);
        assert_eq!(Identity::from_user_agent(fake).metadata, None);
    }

    #[test]
    fn a_session_without_a_user_agent_takes_the_browsers_own_without_headless() {
        let version = json!({"product": "HeadlessChrome/156.0.8078.129", "userAgent": SHELL});
        let identity = Identity::for_session(None, &version).expect("an identity");
        assert!(!identity.user_agent.contains("Headless"));
        let metadata = identity.metadata.expect("hints");
        assert_eq!(metadata.full_version, "156.0.0.0");
        assert_eq!(Identity::for_session(None, &json!({})), None);
        let asked = Identity::for_session(Some("ua/1"), &version).expect("an identity");
        assert_eq!(asked.user_agent, "ua/1");
    }

    #[test]
    fn brands_follow_chromiums_grease_for_the_major_version() {
        // As measured on Chromium 156: [Not:A-Brand 8, Chromium 156].
        let m = Identity::from_user_agent(SHELL).metadata.expect("hints");
        let brands: Vec<(&str, &str)> = m
            .brands
            .iter()
            .map(|b| (b.brand.as_str(), b.version.as_str()))
            .collect();
        assert_eq!(brands, [("Not:A-Brand", "8"), ("Chromium", "156")]);
        assert_eq!(m.full_version_list[1].version, "156.0.8078.129");
        assert_eq!(m.full_version_list[0].version, "8.0.0.0");
        assert_eq!(
            (m.platform, m.architecture, m.bitness),
            ("Linux", "x86", "64")
        );
        // Chrome 120 sends "Not_A Brand";v="8" (its seed's parity keeps the order).
        let m = Identity::from_user_agent(WINDOWS).metadata.expect("hints");
        assert_eq!(m.brands[0].brand, "Not_A Brand");
        assert_eq!(m.brands[0].version, "8");
        // An odd major puts Chromium first.
        let m = Identity::from_user_agent("Mozilla/5.0 (X11; Linux x86_64) Chrome/121.0.0.0")
            .metadata
            .expect("hints");
        assert_eq!(m.brands[0].brand, "Chromium");
        assert_eq!(m.brands[1].brand, "Not A(Brand");
        assert_eq!(m.brands[1].version, "99");
    }

    #[test]
    fn the_platform_comes_from_the_user_agent() {
        let windows = Identity::from_user_agent(WINDOWS);
        assert_eq!(windows.platform, "Win32");
        let m = windows.metadata.expect("hints");
        assert_eq!(
            (m.platform, m.platform_version.as_str()),
            ("Windows", "10.0.0")
        );
        assert_eq!((m.architecture, m.bitness, m.mobile), ("x86", "64", false));

        let mac = Identity::from_user_agent(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        );
        assert_eq!(mac.platform, "MacIntel");
        let m = mac.metadata.expect("hints");
        assert_eq!(
            (m.platform, m.platform_version.as_str()),
            ("macOS", "10.15.7")
        );

        let android = Identity::from_user_agent(
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
        );
        assert_eq!(android.platform, "Linux armv81");
        let m = android.metadata.expect("hints");
        assert_eq!(m.platform, "Android");
        assert!(m.mobile);
        assert_eq!(
            (m.platform_version.as_str(), m.model.as_str()),
            ("10.0.0", "K")
        );

        let cros = Identity::from_user_agent(
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        );
        let m = cros.metadata.expect("hints");
        assert_eq!(
            (m.platform, m.platform_version.as_str()),
            ("Chrome OS", "14541.0.0")
        );

        let arm = Identity::from_user_agent("Mozilla/5.0 (X11; Linux aarch64) Chrome/120.0.0.0");
        assert_eq!(arm.platform, "Linux aarch64");
        assert_eq!(arm.metadata.expect("hints").architecture, "arm");
    }

    #[test]
    fn a_user_agent_that_is_not_chromiums_has_no_hints() {
        let firefox = Identity::from_user_agent(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
        );
        assert_eq!(firefox.metadata, None);
        assert_eq!(firefox.platform, "Win32");
        let params = firefox.override_params();
        assert!(params.get("userAgentMetadata").is_none());
        assert_eq!(params["userAgent"], firefox.user_agent.as_str());
        assert_eq!(Identity::from_user_agent("ua/1").metadata, None);
    }

    #[test]
    fn override_params_carry_the_metadata_in_cdps_shape() {
        let params = Identity::from_user_agent(WINDOWS).override_params();
        assert_eq!(params["platform"], "Win32");
        let m = &params["userAgentMetadata"];
        assert_eq!(m["platform"], "Windows");
        assert_eq!(
            m["brands"][1],
            json!({"brand": "Chromium", "version": "120"})
        );
        assert_eq!(m["fullVersionList"][1]["version"], "120.0.0.0");
        for field in [
            "platformVersion",
            "architecture",
            "model",
            "mobile",
            "bitness",
            "wow64",
        ] {
            assert!(m.get(field).is_some(), "{field}");
        }
    }
}
