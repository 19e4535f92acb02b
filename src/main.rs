//! Dispatch only: a subcommand is the operator CLI; no subcommand under lightningd
//! (`LIGHTNINGD_PLUGIN=1`) is the plugin.

use clap::Parser;

fn main() {
    let has_subcommand = std::env::args_os().nth(1).is_some();
    if !has_subcommand && std::env::var_os("LIGHTNINGD_PLUGIN").is_some_and(|v| v == "1") {
        std::process::exit(cln_replguard::plugin::run());
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
