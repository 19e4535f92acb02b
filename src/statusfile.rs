//! The plugin's status file, read back by `cln-replguard status --from-file`: the report is
//! written every check, so it stays readable while lightningd is frozen on a commit. A file
//! that stopped changing means the plugin stopped checking: "unknown", never the old verdict.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::report::StatusDocument;
use crate::verdict::{Code, Finding, Level};

/// The status file's name in lightningd's network directory, unless `replguard-status-file`
/// says otherwise.
pub const DEFAULT_NAME: &str = "replguard-status.json";

/// Owner reads and writes, lightningd's group reads (a monitoring user in that group runs
/// `status --from-file`), nobody else.
const MODE: u32 = 0o640;

/// Where the status file goes for `replguard-status-file` (`options::Settings::status_file`):
/// relative paths under `dir`, lightningd's network directory; `None` when it is `off`.
pub fn location(setting: &Option<Option<String>>, dir: &Path) -> Option<PathBuf> {
    match setting {
        None => Some(dir.join(DEFAULT_NAME)),
        Some(None) => None,
        Some(Some(p)) => Some(dir.join(p)),
    }
}

/// Replaces the file at once: readers see the old report or the new one, never half. The
/// temporary file is created exclusively under a random name in the same directory, so a
/// link planted there is never followed (a predictable name let one overwrite another file),
/// and the rename stays within one filesystem.
pub fn write(path: &Path, report: &StatusDocument) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut doc = report.clone();
    doc.plugin.written_at = Some(crate::timefmt::rfc3339(SystemTime::now()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".replguard-status.")
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(MODE))
        .tempfile_in(dir)?;
    tmp.write_all(&serde_json::to_vec_pretty(&doc.to_json())?)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A report older than this many check intervals is stale.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// The document as read, with `verdict` forced to unknown (and a finding saying why) when
/// it is stale or unreadable; and the level to exit with.
pub fn judge(mut doc: StatusDocument, now: SystemTime) -> (StatusDocument, Level) {
    let interval = Duration::from_millis(doc.plugin.interval_ms.unwrap_or(1000));
    let written = doc
        .plugin
        .written_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok());
    let age = written.map(|w| now.duration_since(w).unwrap_or_default());
    let stale_after = interval * STALE_AFTER_INTERVALS;
    let problem = match age {
        None => Some("the status file has no readable written_at".to_string()),
        Some(a) if a > stale_after => Some(format!(
            "the status file is {:.1} s old (more than {STALE_AFTER_INTERVALS} check intervals): \
             the plugin is not checking (lightningd stopped, or the plugin hung)",
            a.as_secs_f64()
        )),
        Some(_) => None,
    };
    doc.plugin.file_age_ms = age.map(|a| a.as_millis() as u64);
    let level = match problem {
        Some(why) => {
            doc.verdict = Level::Unknown;
            let finding = Finding::new(
                Code::StatusFileStale,
                why,
                "check that lightningd and the plugin run (journalctl, lightningd's log)",
            );
            doc.findings.insert(0, finding);
            Level::Unknown
        }
        None => doc.verdict,
    };
    (doc, level)
}

/// A short human summary of a status file.
pub fn text(doc: &StatusDocument) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "verdict: {} (from the plugin's status file, {:.1} s old; reported {})",
        doc.verdict.as_str().to_uppercase(),
        doc.plugin.file_age_ms.unwrap_or(0) as f64 / 1000.0,
        doc.plugin.reported.map_or("?", Level::as_str),
    );
    if let Some(waiters) = doc.syncrep_waiters.as_ref().filter(|w| w.count > 0) {
        let _ = writeln!(
            out,
            "waiting: {} commit(s) wait for the standby, the longest {:.1} s",
            waiters.count,
            waiters.longest_ms.unwrap_or(0.0) / 1000.0
        );
    }
    for f in &doc.findings {
        let _ = writeln!(out, "  {}\n      fix: {}", f.headline(), f.remedy);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(written: SystemTime, verdict: Level) -> StatusDocument {
        let mut d = crate::report::tests::plugin_document();
        d.verdict = verdict;
        d.findings = vec![];
        d.plugin.interval_ms = Some(1000);
        d.plugin.written_at = Some(crate::timefmt::rfc3339(written));
        d
    }

    #[test]
    fn a_fresh_file_keeps_its_verdict() {
        let now = SystemTime::now();
        let (d, l) = judge(doc(now - Duration::from_millis(1500), Level::Unsafe), now);
        let d = d.to_json();
        assert_eq!(l, Level::Unsafe);
        assert_eq!(d["verdict"], "unsafe");
    }

    #[test]
    fn a_file_older_than_three_intervals_is_unknown() {
        let now = SystemTime::now();
        let (d, l) = judge(doc(now - Duration::from_secs(4), Level::Safe), now);
        let d = d.to_json();
        assert_eq!(l, Level::Unknown);
        assert_eq!(d["verdict"], "unknown");
        assert_eq!(d["findings"][0]["code"], "status-file-stale");
    }

    #[test]
    fn written_without_following_a_planted_link_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.path().join(DEFAULT_NAME);
        // Where a predictable temporary name would be.
        std::os::unix::fs::symlink(&victim, dir.path().join("replguard-status.json.tmp")).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let mut report = doc(SystemTime::UNIX_EPOCH, Level::Safe);
        report.plugin.written_at = None;
        write(&path, &report).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o137, 0);
        let read = StatusDocument::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(judge(read, SystemTime::now()).1, Level::Safe);
        // Nothing left behind but the file, the victim and the planted link.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn the_option_places_the_file_or_turns_it_off() {
        let dir = Path::new("/ln/regtest");
        assert_eq!(
            location(&None, dir),
            Some(dir.join("replguard-status.json"))
        );
        assert_eq!(location(&Some(None), dir), None);
        assert_eq!(
            location(&Some(Some("s.json".into())), dir),
            Some(dir.join("s.json"))
        );
        assert_eq!(
            location(&Some(Some("/var/lib/s.json".into())), dir),
            Some(PathBuf::from("/var/lib/s.json"))
        );
    }

    #[test]
    fn a_file_without_a_time_is_unknown() {
        let mut d = doc(SystemTime::now(), Level::Safe);
        d.plugin.written_at = None;
        let (_, l) = judge(d, SystemTime::now());
        assert_eq!(l, Level::Unknown);
    }
}
