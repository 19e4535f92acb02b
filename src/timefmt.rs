//! Times as the reports, the status file and the findings print them (RFC 3339, UTC). Below
//! every layer that prints a time, so none of them has to import another for it.

use std::time::SystemTime;

/// `2026-11-26T12:00:00.123Z`: what the reports and the status file carry.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `2026-11-26T12:00:00Z`: for a line an operator reads.
pub fn rfc3339_seconds(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
