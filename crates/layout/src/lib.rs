//! Pure placement math, no I/O: what a volume looks like as a translator graph, where a name
//! lives in a distributed volume, which brick holds which bytes of a striped file, and which
//! node hosts which public address.

pub mod alloc;
pub mod hash;
pub mod spec;
pub mod stripe;

pub use hash::{hash_name, pick};
pub use spec::{BrickSpec, Graph, SpecError, VolumeSpec, VolumeType};
pub use stripe::{chunks, Chunk};
