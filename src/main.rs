//! Dispatch only: a subcommand is the operator CLI; no subcommand under lightningd
//! (`LIGHTNINGD_PLUGIN=1`) is the plugin; nothing at all outside lightningd is the usage.

use clap::Parser;

/// Flags lightningd gives every plugin it starts (lightningd/plugin.c): in developer mode
/// `--developer`, under `--dev-debugger` `--dev-debug-self`. They are not subcommands.
const LIGHTNINGD_PLUGIN_FLAGS: &[&str] = &["--developer", "--dev-debug-self"];

fn main() {
    let has_subcommand = std::env::args_os()
        .skip(1)
        .any(|a| !LIGHTNINGD_PLUGIN_FLAGS.iter().any(|f| a == *f));
    if !has_subcommand && std::env::var_os("LIGHTNINGD_PLUGIN").is_some_and(|v| v == "1") {
        std::process::exit(cln_replguard::plugin::run());
    }
    if !has_subcommand {
        // Bare, outside lightningd: CLN's `reckless install` test-runs the plugin this way
        // and keeps the install only on exit 0; an operator gets the usage.
        use clap::CommandFactory;
        let _ = cln_replguard::cli::Cli::command().print_help();
        std::process::exit(0);
    }
    let cli = match cln_replguard::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                cln_replguard::cli::EXIT_USAGE
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    std::process::exit(cln_replguard::cli::run(cli));
}
