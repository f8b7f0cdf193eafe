//! The ticket domain of ticketd: commands, events, state, and the pure `decide`/`evolve`
//! functions that hold every lifecycle rule of the contract. No I/O lives here; the event
//! codec (MessagePack with named fields) and the hash chain are pure functions too, so every
//! layer and every auditor computes them the same way.

pub mod command;
pub mod decide;
pub mod error;
pub mod event;
pub mod hash;
pub mod policy;
pub mod ticket;
pub mod types;
pub mod upcast;

pub use command::{
    AddComment, ChangeStatus, Command, CommandKind, EditTicket, Escalate, OpenTicket, Withdraw,
};
pub use decide::{decide, limits};
pub use error::{DomainError, FieldError};
pub use event::{DecodeError, EncodeError, Event, Metadata, Recorded, EVENT_TYPES};
pub use hash::{event_hash, HashInput, HASH_LEN, ZERO_HASH};
pub use policy::SlaPolicy;
pub use ticket::{evolve, State, Ticket};
pub use types::{
    Actor, Channel, FieldValue, Fields, FieldsPatch, Priority, Role, Status, UnknownValue,
    Visibility,
};
