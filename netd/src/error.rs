//! netd's refusals, by kind. Every refusal the engine makes says what is
//! wrong and how to fix it, and carries one kind; the kind is mapped once
//! to each front-end's answer: the socket's reply (and the CLI's exit
//! code), Docker's HTTP status, a CNI error code. Errors that carry no
//! kind (the kernel refused, a netlink call failed) are `internal`.

use serde::{Deserialize, Serialize};

/// What kind of refusal this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The object named does not exist.
    NotFound,
    /// It clashes with something that exists (a name, an address, a port).
    Conflict,
    /// The request itself is wrong (a bad address, an option out of range).
    Invalid,
    /// Not possible now: the daemon cannot be reached. (A pool or table
    /// used up is a conflict with what exists.)
    Unavailable,
    /// netd or the kernel failed.
    Internal,
}

impl ErrorKind {
    /// The CLI's exit status (1 stays the generic failure).
    pub const fn exit_code(self) -> u8 {
        match self {
            Self::Internal => 1,
            Self::NotFound => 3,
            Self::Conflict => 4,
            Self::Invalid => 5,
            Self::Unavailable => 6,
        }
    }

    /// The HTTP status of Docker's plugin protocol. Not 404 for not-found:
    /// Docker reads a 404 as "method not implemented".
    pub const fn http_status(self) -> u16 {
        match self {
            Self::Invalid => 400,
            Self::Conflict => 409,
            Self::Unavailable => 503,
            Self::NotFound | Self::Internal => 500,
        }
    }

    /// The CNI error code (CNI 1.1's well-known codes; 100 is netd's own).
    pub const fn cni_code(self) -> u32 {
        match self {
            Self::Invalid => 7,
            Self::Unavailable => 11,
            Self::NotFound | Self::Conflict | Self::Internal => 100,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::NotFound => "not-found",
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// A refusal: its kind, what to fix, and a CNI code where one more precise
/// than the kind's applies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub cni_code: Option<u32>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            cni_code: None,
        }
    }

    /// With a precise CNI error code (the kind still decides elsewhere).
    pub fn with_cni_code(mut self, code: u32) -> Self {
        self.cni_code = Some(code);
        self
    }

    pub fn cni_code(&self) -> u32 {
        self.cni_code.unwrap_or(self.kind.cni_code())
    }
}

/// The kind of an error from anywhere in the chain; `internal` when
/// nothing in it was a refusal.
pub fn kind_of(err: &anyhow::Error) -> ErrorKind {
    refusal_of(err).map_or(ErrorKind::Internal, |e| e.kind)
}

/// The refusal in an error's chain, if there is one (as its error, or as
/// the context an underlying error was given).
pub fn refusal_of(err: &anyhow::Error) -> Option<&Error> {
    err.downcast_ref::<Error>()
        .or_else(|| err.chain().find_map(|cause| cause.downcast_ref::<Error>()))
}

/// `not_found!("no network named {name:?}")`: an `anyhow::Error` of that kind.
#[macro_export]
macro_rules! not_found {
    ($($arg:tt)*) => { $crate::error::refusal($crate::error::ErrorKind::NotFound, format!($($arg)*)) };
}
#[macro_export]
macro_rules! conflict {
    ($($arg:tt)*) => { $crate::error::refusal($crate::error::ErrorKind::Conflict, format!($($arg)*)) };
}
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::refusal($crate::error::ErrorKind::Invalid, format!($($arg)*)) };
}
#[macro_export]
macro_rules! unavailable {
    ($($arg:tt)*) => { $crate::error::refusal($crate::error::ErrorKind::Unavailable, format!($($arg)*)) };
}

/// A refusal with a precise CNI code; its kind follows from the code.
pub fn coded(code: u32, message: impl Into<String>) -> anyhow::Error {
    let kind = match code {
        3 => ErrorKind::NotFound,
        11 | 50 | 51 => ErrorKind::Unavailable,
        _ => ErrorKind::Invalid,
    };
    anyhow::Error::new(Error::new(kind, message).with_cni_code(code))
}

pub fn refusal(kind: ErrorKind, message: String) -> anyhow::Error {
    anyhow::Error::new(Error::new(kind, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_found_under_context() {
        let err = crate::conflict!("address {} is in use", "10.0.0.2").context("connecting");
        assert_eq!(kind_of(&err), ErrorKind::Conflict);
        assert_eq!(format!("{err:#}"), "connecting: address 10.0.0.2 is in use");
        assert_eq!(
            kind_of(&anyhow::anyhow!("netlink failed")),
            ErrorKind::Internal
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let unreachable =
            anyhow::Error::new(io).context(Error::new(ErrorKind::Unavailable, "no daemon"));
        assert_eq!(kind_of(&unreachable), ErrorKind::Unavailable);
        assert!(unreachable.chain().any(|c| c.is::<std::io::Error>()));
    }
}
