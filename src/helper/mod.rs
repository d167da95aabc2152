//! The GOCACHEPROG helper: what runs in the process `go` starts, one per
//! `go` command.
//!
//! - [`protocol`]: the messages, field by field, and their streaming
//!   decoder;
//! - [`session`]: one conversation with `go`, from the capabilities line to
//!   `close`.

pub(crate) mod faults;
pub(crate) mod protocol;
pub(crate) mod session;
