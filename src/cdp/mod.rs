//! Chrome DevTools Protocol plumbing: reading messages cheaply and sharing one browser
//! connection between several clients.

pub mod driver;
pub mod message;
pub mod mux;
