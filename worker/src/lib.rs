//! The worker side of Switchyard: the runtime that pulls jobs for a backend's models and
//! streams their events back, and the transport-debugging backends (`echo`, `dummy`).
//!
//! A backend only implements [`Backend`]: say which models it serves and run one job. The
//! [`runtime`] does everything else — one shared durable consumer per lane of each model,
//! pulling only as many jobs as there are free slots (interactive jobs first, batch jobs only
//! into spare slots: [`slots`]), in-progress acks while a job runs, heartbeats into the
//! registry, cancellation (NATS announcements, and the Redis flag where they may have been missed),
//! resuming redelivered jobs where the dead worker stopped, and a graceful drain on SIGTERM.

pub mod backend;
pub mod backends;
mod observe;
mod running;
pub mod runtime;
pub mod sink;
pub mod slots;
pub mod tool_calls;

pub use backend::{Backend, BackendError, Finish, Job};
pub use runtime::{RuntimeOptions, run_worker};
pub use sink::EventSink;
