//! A node's mark that the shared tree is not mounted on it
//! (`LoadReport.unmounted`), as those who place jobs read it.

use std::path::Path;

use tonic::metadata::MetadataValue;
use tonic::Status;

/// The metadata key under which a `cwd-missing` refusal names the mark.
pub const METADATA_KEY: &str = "mexec-unmounted";

/// Names the mark `top` on a `cwd-missing` refusal.
pub fn attach(status: &mut Status, top: &str) {
    if let Ok(value) = MetadataValue::try_from(top) {
        status.metadata_mut().insert(METADATA_KEY, value);
    }
}

/// The mark a refusal names, if any.
pub fn of(status: &Status) -> Option<String> {
    let value = status.metadata().get(METADATA_KEY)?.to_str().ok()?;
    (!value.is_empty()).then(|| value.to_owned())
}

/// Whether a job in `cwd` (the bytes a job carries) is under `unmounted`,
/// a node's mark (empty: none), and so would be refused there.
pub fn under(cwd: &[u8], unmounted: &str) -> bool {
    !unmounted.is_empty() && Path::new(&*String::from_utf8_lossy(cwd)).starts_with(unmounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cwd_is_under_the_mark_by_whole_components() {
        assert!(under(b"/src/proj", "/src"));
        assert!(under(b"/src", "/src"));
        assert!(!under(b"/srcx/proj", "/src"));
        assert!(!under(b"/src/proj", ""));
    }
}
