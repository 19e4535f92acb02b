//! Whether anything answers at an address, with positive proof either way. A fence must never
//! read "cannot tell" as "gone": a permission error on a socket, a timeout or a name that does
//! not resolve prove nothing about the process behind it.

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::facts::Upstream;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Something accepted a connection.
    Answers,
    /// Proof that nothing listens: no such socket file, or the connection refused.
    Gone,
    /// Neither: why.
    CannotTell(String),
}

/// A Unix socket: only "no such file" and "connection refused" prove it gone.
pub fn unix(path: &Path) -> Reach {
    match UnixStream::connect(path) {
        Ok(_) => Reach::Answers,
        Err(e) => gone_or_not(&e, &path.display().to_string()),
    }
}

/// A PostgreSQL server at `up`: its socket in a directory, or each address a host name has.
pub fn server(up: &Upstream, timeout: Duration) -> Reach {
    if up.host.starts_with('@') {
        // libpq's abstract-namespace socket: no file to look for.
        return Reach::CannotTell(format!("{up}: an abstract socket is not tried from here"));
    }
    if up.host.starts_with('/') {
        return unix(&Path::new(&up.host).join(format!(".s.PGSQL.{}", up.port)));
    }
    let addrs = match (up.host.as_str(), up.port).to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return Reach::CannotTell(format!("{up}: {e}")),
    };
    if addrs.is_empty() {
        return Reach::CannotTell(format!("{up}: the name has no address"));
    }
    let mut unknown = Vec::new();
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Reach::Answers,
            Err(e) => {
                if let Reach::CannotTell(why) = gone_or_not(&e, &a.to_string()) {
                    unknown.push(why);
                }
            }
        }
    }
    if unknown.is_empty() {
        Reach::Gone
    } else {
        Reach::CannotTell(unknown.join("; "))
    }
}

/// Every address of a list: answers when one does, gone only when all are.
pub fn any_server(ups: &[Upstream], timeout: Duration) -> Reach {
    if ups.is_empty() {
        return Reach::CannotTell("the address the standby streamed from is not known".into());
    }
    let mut unknown = Vec::new();
    for up in ups {
        match server(up, timeout) {
            Reach::Answers => return Reach::Answers,
            Reach::Gone => {}
            Reach::CannotTell(why) => unknown.push(why),
        }
    }
    if unknown.is_empty() {
        Reach::Gone
    } else {
        Reach::CannotTell(unknown.join("; "))
    }
}

fn gone_or_not(e: &std::io::Error, what: &str) -> Reach {
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => Reach::Gone,
        _ => Reach::CannotTell(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_socket_or_a_closed_port_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unix(&dir.path().join("none")), Reach::Gone);
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let up = Upstream {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(server(&up, Duration::from_secs(1)), Reach::Gone);
    }

    #[test]
    fn a_listener_answers() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up = Upstream {
            host: "127.0.0.1".into(),
            port: l.local_addr().unwrap().port(),
        };
        assert_eq!(server(&up, Duration::from_secs(1)), Reach::Answers);
        let dir = tempfile::tempdir().unwrap();
        let _s = std::os::unix::net::UnixListener::bind(dir.path().join(".s.PGSQL.5")).unwrap();
        let sock = Upstream {
            host: dir.path().display().to_string(),
            port: 5,
        };
        assert_eq!(
            any_server(&[up.clone(), sock], Duration::from_secs(1)),
            Reach::Answers
        );
    }

    #[test]
    fn a_socket_that_cannot_be_opened_is_no_proof() {
        // A path through a regular file gives ENOTDIR, as root too (permissions do not stop
        // root, so a mode-000 directory would prove nothing here).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(unix(&file.join("sock")), Reach::CannotTell(_)));
        assert!(matches!(
            any_server(&[], Duration::from_secs(1)),
            Reach::CannotTell(_)
        ));
        let abstract_socket = Upstream {
            host: "@pg".into(),
            port: 5432,
        };
        assert!(matches!(
            server(&abstract_socket, Duration::from_secs(1)),
            Reach::CannotTell(_)
        ));
    }
}
