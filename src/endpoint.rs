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
    let io = |source| EndpointError::Io {
        path: dir.to_owned(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    check_dir(dir)
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
