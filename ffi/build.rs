//! Gives `libember.so` a SONAME on ELF systems: `libember.so.MAJOR`, or `libember.so.0.MINOR`
//! while the major version is 0 (Cargo's compatibility rule: 0.x releases break with the
//! minor). A program linked with `-lember` then records that name, so a later incompatible
//! library installed beside it (`scripts/install.sh` keeps the versioned file and its links) is
//! never loaded in its place.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let elf = matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    );
    if elf {
        let major = env!("CARGO_PKG_VERSION_MAJOR");
        let abi = if major == "0" {
            format!("0.{}", env!("CARGO_PKG_VERSION_MINOR"))
        } else {
            major.to_string()
        };
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libember.so.{abi}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
