//! What the build knows about itself (set by build.rs): `--version`, the
//! landing page and `loopwatch_build_info` read it.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("LOOPWATCH_GIT_REVISION");
pub const BRANCH: &str = env!("LOOPWATCH_GIT_BRANCH");
pub const RUST_VERSION: &str = env!("LOOPWATCH_RUST_VERSION");

/// `--version` output, in the exporter convention.
pub fn version_line() -> String {
    format!(
        "loopwatch, version {VERSION} (branch: {BRANCH}, revision: {REVISION})\n  rust version: {RUST_VERSION}\n  platform: {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}
