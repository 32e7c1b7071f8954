//! Operating-system specific parts, one module per family, so ports
//! replace these and nothing else. Both export the same names.

#[cfg(unix)]
mod ninja;
#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;
