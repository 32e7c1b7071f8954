//! Operating-system specific parts, one module per family, so ports to
//! Windows and other Unixes replace these and nothing else.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;
