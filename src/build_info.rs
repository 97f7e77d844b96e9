//! How this binary was built, for `sluice --version` and the `sluice_build_info` metric: an
//! operator can tell the shipped profile-guided build (bench/pgo.py, docker/build.sh) from a
//! plain `cargo build`.

/// Set (to any value) by bench/pgo.py for the build that uses the profile; cargo rebuilds
/// when it changes.
const PGO: bool = option_env!("SLUICE_PGO_BUILD").is_some();

/// Set by bench/pgo.py beside `SLUICE_PGO_BUILD` when the binary's code is laid out again by
/// BOLT after the build (pgo.py refuses to hand out one that BOLT did not process).
const BOLT: bool = option_env!("SLUICE_BOLT_BUILD").is_some();

/// `profile-guided+bolt`, `profile-guided`, `release` or `debug`.
pub const fn kind() -> &'static str {
    if PGO && BOLT {
        "profile-guided+bolt"
    } else if PGO {
        "profile-guided"
    } else if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `0.1.0 (profile-guided+bolt build)`: what `sluice --version` prints after the name.
pub const fn long_version() -> &'static str {
    if PGO && BOLT {
        concat!(env!("CARGO_PKG_VERSION"), " (profile-guided+bolt build)")
    } else if PGO {
        concat!(env!("CARGO_PKG_VERSION"), " (profile-guided build)")
    } else if cfg!(debug_assertions) {
        concat!(env!("CARGO_PKG_VERSION"), " (debug build)")
    } else {
        concat!(env!("CARGO_PKG_VERSION"), " (release build)")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_kind_of_build() {
        let v = super::long_version();
        assert!(v.starts_with(super::VERSION), "{v}");
        assert!(v.contains(super::kind()), "{v}");
    }
}
