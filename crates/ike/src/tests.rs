//! Tests of the crate as a whole; each module's own tests sit next to it.

mod garble;
