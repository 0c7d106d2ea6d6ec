//! fleetkey's own files: the daemon's binary and config, and every folder
//! above them, owned by root and not writable by other users (a writable
//! folder lets its writer replace the file).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{fail, ids, pass};
use crate::{Attribute, Root};

/// Why `path` (a file or folder) is unsafe, if it is.
fn unsafe_because(root: &Root, path: &str) -> Option<String> {
    let meta = match root.metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(e.to_string()),
    };
    let mode = meta.mode();
    if meta.uid() != 0 {
        return Some(format!("{path} is owned by uid {}, not root", meta.uid()));
    }
    // A sticky folder (/tmp) still lets others make their own entries, but
    // fleetkey's files have no business there.
    if mode & 0o002 != 0 {
        return Some(format!(
            "{path} is writable by every user (mode {:o})",
            mode & 0o7777
        ));
    }
    if mode & 0o020 != 0 && meta.gid() != 0 {
        return Some(format!(
            "{path} is writable by group {} (mode {:o})",
            meta.gid(),
            mode & 0o7777
        ));
    }
    None
}

pub fn own_files(root: &Root, files: &[String]) -> Attribute {
    const HINT: &str =
        "chown root:root the file and its folders, and chmod go-w them (packages install them so).";
    if files.is_empty() {
        return pass(ids::OWN_FILES, "valid", "no files to check");
    }
    let mut problems = Vec::new();
    for file in files {
        let mut path = Path::new(file);
        let mut checked = vec![file.clone()];
        while let Some(parent) = path.parent() {
            if parent.as_os_str().is_empty() {
                break;
            }
            checked.push(parent.to_string_lossy().into_owned());
            path = parent;
        }
        // The file first, then its folders up to /.
        if let Some(problem) = checked.iter().find_map(|p| unsafe_because(root, p)) {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        pass(
            ids::OWN_FILES,
            "valid",
            format!(
                "{} owned by root and not writable by others",
                files.join(", ")
            ),
        )
    } else {
        fail(ids::OWN_FILES, "not-valid", problems.join("; "), HINT)
    }
}
