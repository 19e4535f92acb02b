//! Plugin mode (lightningd starts us with `LIGHTNINGD_PLUGIN=1` and no arguments).
//!
//! Not built yet: the plugin issue adds the startup check and the RPC methods. Until then the
//! binary says so and exits non-zero, so an `important-plugin` line stops lightningd rather
//! than letting it run unguarded.

pub fn run() -> i32 {
    eprintln!(
        "cln-replguard: plugin mode is not implemented in this version; use the CLI \
         (cln-replguard check --dsn …) as a pre-flight check"
    );
    1
}
