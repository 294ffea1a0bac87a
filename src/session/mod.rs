//! Sessions: what a client created, where it is in its life, and the browser behind it.
//!
//! * [`state`] is the state machine; nothing else decides transitions.
//! * [`handle`] is [`Session`]; it changes only through its own methods.
//! * [`params`] validates create bodies.
//! * [`registry`] is the front door: create, look up, list, release, shut down. It uses
//!   [`admission`] (capacity, queue, tenant quotas via [`quota`]), [`directory`] (every
//!   session the gateway knows, in creation order) and [`pool`] (pre-launched browsers).
//! * [`create`] is the create pipeline: admit, launch or take a pooled browser, go live,
//!   meter, hand over to the supervisor.
//! * [`supervisor`] is the one task per session that ends it and always reaps its browser.
//! * [`view`] is what a client sees of a session, live here or known from its record.
//!
//! This module must not know about HTTP or WebSocket framing: it tells the multiplexer why
//! clients must go, and the proxy picks the close frame.

pub(crate) mod admission;
pub(crate) mod context;
pub(crate) mod create;
pub(crate) mod directory;
pub(crate) mod handle;
pub(crate) mod params;
mod pool;
mod quota;
pub(crate) mod registry;
pub(crate) mod state;
pub(crate) mod supervisor;
pub(crate) mod view;

pub(crate) use handle::Session;
