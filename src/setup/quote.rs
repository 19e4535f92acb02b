//! Quoting for every language `setup` writes values into: SQL, PostgreSQL's configuration
//! files, libpq conninfo, the shell, and the `%` escapes of archive_command/restore_command.
//! Values reach these only through here, after `input` has refused control characters (a
//! newline would end a heredoc or a configuration line whatever the quoting).

/// A SQL string literal (standard_conforming_strings, PostgreSQL's default since 9.1).
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A string value in postgresql.conf / postgresql.auto.conf, where a backslash escapes too.
pub fn conf_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A conninfo value (`host=…`), quoted only when libpq's key=value parser needs it.
pub fn conninfo_value(s: &str) -> String {
    if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// One shell word: as is when it holds nothing the shell treats specially, else in single
/// quotes (a quote inside becomes `'\''`).
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A directory inside archive_command or restore_command: a shell word whose `%` PostgreSQL
/// must not take for `%f`/`%p`.
pub fn wal_command_dir(dir: &str) -> String {
    shell_word(dir).replace('%', "%%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_language_gets_its_own_escapes() {
        assert_eq!(sql_literal("10GB"), "'10GB'");
        assert_eq!(sql_literal("a'; DROP ROLE x; --"), "'a''; DROP ROLE x; --'");
        assert_eq!(conf_literal(r"C:\x'y"), r"'C:\\x''y'");
        assert_eq!(conninfo_value("/run/postgresql"), "/run/postgresql");
        assert_eq!(conninfo_value("/srv/my sock's"), r"'/srv/my sock\'s'");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(shell_word("/srv/pg"), "/srv/pg");
        assert_eq!(shell_word("a b'c"), r"'a b'\''c'");
        assert_eq!(shell_word("$(reboot)"), "'$(reboot)'");
        assert_eq!(wal_command_dir("/wal/50%"), "/wal/50%%");
        assert_eq!(wal_command_dir("/w a/%f"), "'/w a/%%f'");
    }
}
