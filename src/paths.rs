//! Paths as users write them in pipeline files.

use std::path::{Path, PathBuf};

/// `path` with a leading `~/` replaced by the home directory (`$HOME`), so that a pipeline can
/// name a per-user cache such as `~/.cache/ropelens/real` (where scripts/fetch-real.sh puts the
/// real model). Any other path, or `~/...` without `$HOME`, is returned as it is.
pub fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leading_tilde_is_the_home() {
        let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
        assert_eq!(expand_home(Path::new("~/a/b")), home.join("a/b"));
        assert_eq!(expand_home(Path::new("a/~/b")), PathBuf::from("a/~/b"));
        assert_eq!(expand_home(Path::new("/x/y")), PathBuf::from("/x/y"));
        assert_eq!(expand_home(Path::new("~user/x")), PathBuf::from("~user/x"));
    }
}
