//! Records the git commit the binary is built from, for `cln-replguard --version`. From a
//! checkout: `git rev-parse` (plus "-dirty" when tracked files differ). From a crate tarball
//! (`cargo install` of a published package, no `.git`): the commit cargo wrote into
//! `.cargo_vcs_info.json` when it packaged it. Otherwise "unknown": a build never fails for
//! want of git.

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = from_git()
        .or_else(from_cargo_vcs_info)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CLN_REPLGUARD_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn from_git() -> Option<String> {
    // Only this crate's own repository: not a parent directory's (a tarball unpacked inside
    // some other checkout).
    let top = git(&["rev-parse", "--show-toplevel"])?;
    let here = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    if Path::new(&top).canonicalize().ok()? != Path::new(&here).canonicalize().ok()? {
        return None;
    }
    // Rebuild when HEAD moves or the index changes (a commit, a checkout, staged edits); an
    // unstaged edit alone does not rerun this, so "-dirty" can lag until the next one.
    let git_dir = git(&["rev-parse", "--git-dir"])?;
    for f in ["HEAD", "index"] {
        println!(
            "cargo:rerun-if-changed={}",
            Path::new(&git_dir).join(f).display()
        );
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!(
            "cargo:rerun-if-changed={}",
            Path::new(&git_dir).join(r).display()
        );
    }
    let sha = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{sha}-dirty") } else { sha })
}

fn from_cargo_vcs_info() -> Option<String> {
    let text = std::fs::read_to_string(".cargo_vcs_info.json").ok()?;
    // {"git": {"sha1": "…"}, …}: no JSON parser in a build script for one field.
    let at = text.find("\"sha1\"")?;
    let rest = &text[at + 6..];
    let start = rest.find('"')? + 1;
    let sha: String = rest[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    (sha.len() >= 12).then(|| sha[..12].to_string())
}
