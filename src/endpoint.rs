//! Connection strings, and where relative socket paths live.
//!
//! | string | meaning |
//! |---|---|
//! | `inproc://` or `inproc://name` | a client of the embedded broker in this process (`default`, or the one named) |
//! | `ipc:///abs/path.sock` | Unix socket at an absolute path |
//! | `ipc://daemoneye.sock` | Unix socket in the private runtime directory ([`runtime_dir`]) |
//! | `tcp://host:port` | plaintext TCP (loopback unless the broker allows otherwise) |
//! | `tls://host:port` | mutually authenticated TLS |
//!
//! ```
//! use busbridge::endpoint::Endpoint;
//! assert_eq!(Endpoint::parse("tcp://127.0.0.1:7777").unwrap(), Endpoint::Tcp("127.0.0.1:7777".into()));
//! assert_eq!(Endpoint::parse("inproc://").unwrap(), Endpoint::Inproc("default".into()));
//! assert!(Endpoint::parse("daemoneye.sock").is_err());
//! ```

use std::fmt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of the embedded broker that `inproc://` reaches.
pub const DEFAULT_INPROC: &str = "default";

/// A parsed connection string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The embedded broker of this process with that name.
    Inproc(String),
    /// A Unix socket (absolute once resolved).
    Ipc(PathBuf),
    /// `host:port` over plaintext TCP.
    Tcp(String),
    /// `host:port` over mutually authenticated TLS.
    Tls(String),
}

/// Why a connection string or socket location was refused.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("`{0}` is not a connection string: use inproc://, ipc://PATH, tcp://HOST:PORT or tls://HOST:PORT")]
    /// The connection string's scheme is not `ipc://`, `tcp://`, `tls://` or `inproc://`.
    Scheme(String),
    #[error("`{0}`: {1}")]
    /// The connection string is malformed; says how.
    Invalid(String, &'static str),
    #[error("runtime directory {path}: {reason}")]
    /// The socket's directory is writable by others or not owned by this user.
    UnsafeDirectory {
        /// The directory or path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    #[error("socket access: {0}")]
    /// `transport.socket_mode` or `transport.socket_group` is not usable.
    SocketAccess(String),
    #[error("runtime directory {path}: {source}")]
    /// The runtime directory could not be created or checked.
    Io {
        /// The directory or path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl Endpoint {
    /// Parses a connection string.
    pub fn parse(s: &str) -> Result<Self, EndpointError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| EndpointError::Scheme(s.to_owned()))?;
        match scheme {
            "inproc" => Ok(Self::Inproc(if rest.is_empty() {
                DEFAULT_INPROC.to_owned()
            } else {
                rest.to_owned()
            })),
            "ipc" | "unix" => {
                if rest.is_empty() {
                    return Err(EndpointError::Invalid(s.to_owned(), "empty socket path"));
                }
                Ok(Self::Ipc(PathBuf::from(rest)))
            }
            "tcp" | "tls" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or(EndpointError::Invalid(s.to_owned(), "expected host:port"))?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(EndpointError::Invalid(s.to_owned(), "expected host:port"));
                }
                Ok(if scheme == "tcp" {
                    Self::Tcp(rest.to_owned())
                } else {
                    Self::Tls(rest.to_owned())
                })
            }
            _ => Err(EndpointError::Scheme(s.to_owned())),
        }
    }

    /// The same endpoint with a relative socket path placed in the runtime directory.
    pub fn resolve(self) -> Result<Self, EndpointError> {
        match self {
            Self::Ipc(p) => Ok(Self::Ipc(resolve_socket_path(&p)?)),
            other => Ok(other),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inproc(n) => write!(f, "inproc://{n}"),
            Self::Ipc(p) => write!(f, "ipc://{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp://{a}"),
            Self::Tls(a) => write!(f, "tls://{a}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The private directory for relative socket paths: `$BUSBRIDGE_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR/busbridge`, else `/tmp/busbridge-<uid>`. Created 0700; an existing one
/// must belong to this user and be writable by nobody else.
pub fn runtime_dir() -> Result<PathBuf, EndpointError> {
    let dir = if let Some(d) = std::env::var_os("BUSBRIDGE_RUNTIME_DIR") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(d).join("busbridge")
    } else {
        // SAFETY: geteuid has no preconditions and cannot fail.
        PathBuf::from(format!("/tmp/busbridge-{}", unsafe { libc::geteuid() }))
    };
    ensure_private_dir(&dir)?;
    Ok(dir)
}

/// Places a relative path in [`runtime_dir`]; an absolute one is checked where it is.
pub fn resolve_socket_path(path: &Path) -> Result<PathBuf, EndpointError> {
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        Ok(runtime_dir()?.join(path))
    }
}

/// Creates `dir` with mode 0700 if missing; refuses one that group or others can write or
/// that another user owns.
pub fn ensure_private_dir(dir: &Path) -> Result<(), EndpointError> {
    SocketAccess::default().prepare_dir(dir)
}

/// Who may reach a Unix socket through the file system: its mode and its group. The broker
/// still checks every connecting peer's uid (`transport.allowed_uids`): the file system lets
/// a group's members reach the socket, the uid check decides who is served.
///
/// ```
/// use busbridge::endpoint::SocketAccess;
/// assert_eq!(SocketAccess::default().mode, 0o600);
/// let shared = SocketAccess::parse(None, Some("0")).unwrap(); // gid 0
/// assert_eq!((shared.mode, shared.group), (0o660, Some(0)));
/// assert!(SocketAccess::parse(Some("0666"), Some("0")).is_err()); // others: never
/// assert!(SocketAccess::parse(Some("0660"), None).is_err()); // group bits need a group
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits of the socket file (0600 alone, 0660 with a group by default).
    pub mode: u32,
    /// Group that owns the socket and its directory, if collectors run as other users.
    pub group: Option<u32>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        Self {
            mode: 0o600,
            group: None,
        }
    }
}

impl SocketAccess {
    /// Checks a mode (octal text such as `"0660"`) and a group (a name or a numeric gid)
    /// as `transport.socket_mode` and `transport.socket_group` give them.
    pub fn parse(mode: Option<&str>, group: Option<&str>) -> Result<Self, EndpointError> {
        let group = group.map(resolve_group).transpose()?;
        let mode = match mode {
            Some(m) => check_mode(m)?,
            None if group.is_some() => 0o660,
            None => 0o600,
        };
        if mode & 0o070 != 0 && group.is_none() {
            return Err(EndpointError::SocketAccess(format!(
                "mode {mode:04o} gives a group access but no socket_group is set"
            )));
        }
        Ok(Self { mode, group })
    }

    /// The socket directory's mode: the group may enter it, never write it.
    pub fn dir_mode(&self) -> u32 {
        if self.group.is_some() {
            0o750
        } else {
            0o700
        }
    }

    /// Creates the socket's directory if missing (mode [`dir_mode`](Self::dir_mode), owned by
    /// the group); an existing one must be safe ([`check_dir`]) and, with a group, belong to
    /// that group and let it enter, or its members could never reach the socket.
    pub fn prepare_dir(&self, dir: &Path) -> Result<(), EndpointError> {
        let io = |source| EndpointError::Io {
            path: dir.to_owned(),
            source,
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(self.dir_mode())
                .create(dir)
                .map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(self.dir_mode()))
                .map_err(io)?;
            if self.group.is_some() {
                std::os::unix::fs::chown(dir, None, self.group).map_err(io)?;
            }
        }
        check_dir(dir)?;
        if let Some(gid) = self.group {
            let meta = std::fs::metadata(dir).map_err(io)?;
            if meta.gid() != gid || meta.mode() & 0o010 == 0 {
                return Err(EndpointError::UnsafeDirectory {
                    path: dir.to_owned(),
                    reason: format!(
                        "socket_group {gid} cannot enter it (group {}, mode {:o}); use group {gid} and mode 0750 (systemd: Group= and RuntimeDirectoryMode=0750)",
                        meta.gid(),
                        meta.mode() & 0o777
                    ),
                });
            }
        }
        Ok(())
    }

    /// Gives a freshly bound socket its mode and group.
    pub fn apply(&self, socket: &Path) -> std::io::Result<()> {
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(self.mode))?;
        if self.group.is_some() {
            std::os::unix::fs::chown(socket, None, self.group)?;
        }
        Ok(())
    }
}

/// Parses an octal socket mode: the owner reads and writes, others get nothing.
fn check_mode(text: &str) -> Result<u32, EndpointError> {
    let bad = |why: &str| EndpointError::SocketAccess(format!("mode `{text}`: {why}"));
    let mode = u32::from_str_radix(text, 8).map_err(|_| bad("not an octal mode such as 0660"))?;
    if mode & !0o777 != 0 {
        return Err(bad("only permission bits (0000-0777)"));
    }
    if mode & 0o600 != 0o600 {
        return Err(bad("the owner (the broker) must read and write it"));
    }
    if mode & 0o007 != 0 {
        return Err(bad(
            "others may not reach the socket; use socket_group for other users",
        ));
    }
    Ok(mode)
}

/// A group name or numeric gid to a gid.
fn resolve_group(group: &str) -> Result<u32, EndpointError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(EndpointError::SocketAccess(format!(
            "no group named `{group}` on this machine"
        ))),
        Err(e) => Err(EndpointError::SocketAccess(format!(
            "cannot look up group `{group}`: {e}"
        ))),
    }
}

/// Refuses a directory that group or others can write, or that another user owns.
pub fn check_dir(dir: &Path) -> Result<(), EndpointError> {
    let meta = std::fs::metadata(dir).map_err(|source| EndpointError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let unsafe_dir = |reason: String| EndpointError::UnsafeDirectory {
        path: dir.to_owned(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_dir(format!("owned by uid {}, not {me}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "mode {:o} lets group or others write; use 0700",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            Endpoint::parse("ipc:///run/x.sock").unwrap(),
            Endpoint::Ipc("/run/x.sock".into())
        );
        assert_eq!(
            Endpoint::parse("ipc://daemoneye.sock").unwrap(),
            Endpoint::Ipc("daemoneye.sock".into())
        );
        assert_eq!(
            Endpoint::parse("inproc://agent").unwrap(),
            Endpoint::Inproc("agent".into())
        );
        assert_eq!(
            Endpoint::parse("tls://h:1").unwrap(),
            Endpoint::Tls("h:1".into())
        );
        for bad in ["tcp://nohost", "tcp://h:x", "ipc://", "http://x", "x"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_writable_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check_dir(d.path()),
            Err(EndpointError::UnsafeDirectory { .. })
        ));
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        check_dir(d.path()).unwrap();
    }
}
