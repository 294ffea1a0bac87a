//! Chrome DevTools Protocol plumbing: reading messages cheaply and sharing one browser
//! connection between several clients, within what the guard allows.

pub mod driver;
pub mod guard;
pub mod message;
pub mod mux;
