//! Chrome DevTools Protocol plumbing: reading messages cheaply and sharing one browser
//! connection between several clients, within what the guard allows.

pub(crate) mod driver;
pub(crate) mod guard;
pub(crate) mod identity;
pub(crate) mod message;
pub(crate) mod mux;
