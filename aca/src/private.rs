//! State that is nobody else's business: directories 0700 and files 0600, whatever the umask.
//! The authority's and the registry's data directories and databases go through here, so that
//! keys, issued certificates and profiles are readable by the gateway's user only.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
};

/// Creates `path` (and missing parents) as 0700, or makes an existing directory 0700.
pub fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// Makes an existing file readable and writable by its owner only (0600).
pub fn restrict_file(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}
