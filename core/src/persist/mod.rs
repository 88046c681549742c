//! The optional on-disk copy of the last good key sets (`cf_access_keys_cache`), so that a
//! restart during a Cloudflare outage still serves.
//!
//! One JSON file maps each certs URL to the certs response it last returned and when that
//! response was fetched: `{"<url>": {"fetched_at": N, "certs": <certs json>}, ...}`.
//!
//! Only the root nginx master reads and writes the file, and the worker user may be hostile,
//! so both directions distrust the file system:
//!
//! - the parent directory is reached by walking its path from `/`, one component at a time
//!   (`openat(O_PATH | O_NOFOLLOW)`, holding each directory while opening the next). Every
//!   directory passed must be owned by root or the effective uid, not writable by others
//!   (unless sticky, as `/tmp` is: others cannot rename or remove what is not theirs in
//!   it), nor by a group other than root's or the effective gid's, nor carry an access ACL
//!   when group-writable. A symbolic link is followed only if root or the effective uid owns
//!   it (it sits in a directory that passed those checks), and its target is walked the
//!   same way, at most 40 links. The parent directory itself may not even be sticky and
//!   writable by others. Everything else happens relative to the descriptor the walk ends
//!   with;
//! - [`load`] opens the file with `O_NOFOLLOW | O_NONBLOCK` (a symlink is refused, a FIFO
//!   cannot hang the open), then requires a regular file owned by the effective uid, not
//!   writable by group or others, of at most [`MAX_FILE`] bytes, and reads no more than that;
//! - [`store`] writes a fresh temporary file with an unpredictable name (`O_CREAT | O_EXCL |
//!   O_NOFOLLOW`, mode 0600), syncs it, renames it over the target (which replaces a planted
//!   symlink instead of following it) and syncs the directory.
//!
//! A file that is refused, unreadable or unparsable is ignored by the caller with a warning.
//!
//! `format.rs` holds what the file says, `walk.rs` how it is reached and opened.

mod format;
mod walk;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use format::decode_map;
pub use format::{encode, Saved};
use walk::{
    c_string, check_file, io_error, open_at, open_dir, read_capped, rename_at, split, temp_name,
    unlink_at, write_synced,
};

/// Largest key cache file accepted (bytes).
pub const MAX_FILE: u64 = 4 * 1024 * 1024;

/// Why the key cache file was refused, or could not be read or written.
#[derive(Debug, Error)]
pub enum PersistError {
    #[error("{0:?} has no file name")]
    NoFileName(PathBuf),
    #[error("cannot {what} {path:?}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("symbolic link {path:?} is owned by uid {uid}, not {}", dir_owners(.euid))]
    LinkOwner { path: PathBuf, uid: u32, euid: u32 },
    #[error("too many symbolic links on the way to {0:?}")]
    TooManyLinks(PathBuf),
    #[error("{0:?} is not a directory")]
    NotDir(PathBuf),
    #[error("directory {path:?} is owned by uid {uid}, not {}", dir_owners(.euid))]
    DirOwner { path: PathBuf, uid: u32, euid: u32 },
    #[error("directory {path:?} is writable by others (mode {mode:04o})")]
    DirWritable { path: PathBuf, mode: u32 },
    #[error("directory {path:?} is writable by group {gid} (mode {mode:04o})")]
    DirGroupWritable { path: PathBuf, gid: u32, mode: u32 },
    #[error("directory {path:?} is group-writable and has an access ACL (mode {mode:04o})")]
    DirAcl { path: PathBuf, mode: u32 },
    #[error("{0:?} is a symbolic link")]
    Symlink(PathBuf),
    #[error("{0:?} is not a regular file")]
    NotRegular(PathBuf),
    #[error("{path:?} is owned by uid {uid}, not {euid}")]
    Owner { path: PathBuf, uid: u32, euid: u32 },
    #[error("{path:?} is writable by group or others (mode {mode:04o})")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{0:?} is larger than {MAX_FILE} bytes")]
    TooLarge(PathBuf),
    #[error("no random bytes for a temporary file name")]
    Random,
    #[error("{0}")]
    Format(String),
}

/// The owners a key cache directory may have, for [`PersistError::DirOwner`].
fn dir_owners(euid: &u32) -> String {
    if *euid == 0 {
        "0".to_owned()
    } else {
        format!("0 or {euid}")
    }
}

/// Opens `path` safely and decodes it. `Ok(None)` when the file does not exist (ENOENT on the
/// file; a missing parent directory is also `Ok(None)`).
pub fn load(path: &Path) -> Result<Option<BTreeMap<String, Saved>>, PersistError> {
    let (dir_path, name) = split(path)?;
    let Some(dir) = open_dir(&dir_path)? else {
        return Ok(None);
    };
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let file = match open_at(&dir, &c_string(name, path)?, flags | libc::O_NOCTTY, 0) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(PersistError::Symlink(path.to_path_buf()))
        }
        Err(e) => return Err(io_error("open", path, e)),
    };
    check_file(path, &file)?;
    let bytes = read_capped(path, file)?;
    decode_map(&bytes)
        .map(Some)
        .map_err(|e| PersistError::Format(format!("{path:?} is not a key cache file: {e}")))
}

/// Writes the whole file safely and atomically: readers see the old file or the new one.
pub fn store(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    if u64::try_from(bytes.len()).map_or(true, |n| n > MAX_FILE) {
        return Err(PersistError::TooLarge(path.to_path_buf()));
    }
    let (dir_path, name) = split(path)?;
    let dir = open_dir(&dir_path)?.ok_or_else(|| {
        io_error("open directory", &dir_path, io::Error::from_raw_os_error(libc::ENOENT))
    })?;
    let c_name = c_string(name, path)?;
    let tmp = temp_name(name)?;
    let tmp_path = dir_path.join(&tmp);
    let c_tmp = c_string(&tmp, &tmp_path)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let file = open_at(&dir, &c_tmp, flags, 0o600).map_err(|e| io_error("create", &tmp_path, e))?;
    let replaced = write_synced(file, bytes)
        .map_err(|e| io_error("write", &tmp_path, e))
        .and_then(|()| rename_at(&dir, &c_tmp, &c_name).map_err(|e| io_error("replace", path, e)));
    if let Err(e) = replaced {
        unlink_at(&dir, &c_tmp);
        return Err(e);
    }
    dir.sync_all().map_err(|e| io_error("sync directory", &dir_path, e))
}

#[cfg(test)]
mod tests {
    use std::ffi::{CString, OsStr, OsString};
    use std::fs::{File, Permissions};
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::format::decode_map;
    use super::walk::*;
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, DirBuilderExt as _};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// The file's JSON decoded, as `load` decodes it.
    fn decode(bytes: &[u8]) -> Result<BTreeMap<String, Saved>, PersistError> {
        decode_map(bytes).map_err(|e| PersistError::Format(format!("not a key cache file: {e}")))
    }

    const BODY: &[u8] = br#"{"keys":[{"kid":"a"}],"public_cert":{"kid":"a","cert":"x"}}"#;

    /// A fresh directory (mode 0755) removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("cf-access-persist-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::DirBuilder::new().mode(0o755).create(&path).unwrap();
            fs::set_permissions(&path, Permissions::from_mode(0o755)).unwrap();
            TempDir(path)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        fn entries(&self) -> Vec<OsString> {
            fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name()).collect()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::set_permissions(&self.0, Permissions::from_mode(0o755));
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sets() -> BTreeMap<String, Saved> {
        BTreeMap::from([
            (
                "https://t.cloudflareaccess.com/cdn-cgi/access/certs".to_owned(),
                Saved { fetched_at: 1_700_000_000, body: BODY.to_vec() },
            ),
            (
                "https://u/certs".to_owned(),
                Saved { fetched_at: 0, body: br#"{"keys":[]}"#.to_vec() },
            ),
        ])
    }

    fn encoded() -> Vec<u8> {
        encode(sets().iter().map(|(url, saved)| (url.as_str(), saved)))
    }

    /// A valid cache file at `path`, mode 0644.
    fn write_cache(path: &Path) {
        fs::write(path, encoded()).unwrap();
        fs::set_permissions(path, Permissions::from_mode(0o644)).unwrap();
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn round_trip() {
        let dir = TempDir::new();
        let path = dir.join("keys.json");
        store(&path, &encoded()).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.len(), 2);
        for (url, saved) in sets() {
            let got = &back[&url];
            assert_eq!(got.fetched_at, saved.fetched_at);
            assert_eq!(json(&got.body), json(&saved.body));
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(dir.entries(), vec![OsString::from("keys.json")]);

        // Overwriting keeps a single file too.
        store(&path, &encoded()).unwrap();
        assert_eq!(dir.entries(), vec![OsString::from("keys.json")]);
    }

    #[test]
    fn encode_skips_invalid_bodies() {
        let bad = Saved { fetched_at: 1, body: b"{ truncated".to_vec() };
        let good = Saved { fetched_at: 2, body: BODY.to_vec() };
        let bytes = encode([("https://bad", &bad), ("https://good", &good)]);
        let map = decode(&bytes).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["https://good"]);
        assert_eq!(map["https://good"].fetched_at, 2);
    }

    #[test]
    fn old_format_and_garbage() {
        let old = format!(r#"{{"https://t/certs": {}}}"#, std::str::from_utf8(BODY).unwrap());
        let map = decode(old.as_bytes()).unwrap();
        let saved = &map["https://t/certs"];
        assert_eq!(saved.fetched_at, 0);
        assert_eq!(json(&saved.body), json(BODY));

        for garbage in
            [&b"{ truncated"[..], b"[1, 2]", b"", br#"{"u": {"certs": {}, "fetched_at": -1}}"#]
        {
            let err = decode(garbage).unwrap_err();
            assert!(matches!(err, PersistError::Format(_)), "{err:?}");
            assert!(err.to_string().starts_with("not a key cache file"), "{err}");
        }

        let dir = TempDir::new();
        let path = dir.join("keys.json");
        store(&path, b"{ truncated").unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, PersistError::Format(_)), "{err:?}");
        assert!(err.to_string().contains("is not a key cache file"), "{err}");
    }

    #[test]
    fn missing_file_or_directory() {
        let dir = TempDir::new();
        assert!(load(&dir.join("keys.json")).unwrap().is_none());
        assert!(load(&dir.join("nope/keys.json")).unwrap().is_none());
        // store never creates directories.
        assert!(store(&dir.join("nope/keys.json"), b"{}").is_err());
        assert!(dir.entries().is_empty());
    }

    #[test]
    fn no_file_name() {
        let err = load(Path::new("/")).unwrap_err();
        assert!(matches!(err, PersistError::NoFileName(_)), "{err:?}");
        assert!(store(Path::new("/"), b"{}").is_err());
    }

    #[test]
    fn load_refuses_symlink() {
        let dir = TempDir::new();
        let elsewhere = TempDir::new();
        let target = elsewhere.join("keys.json");
        write_cache(&target);
        assert!(load(&target).unwrap().is_some());
        let path = dir.join("keys.json");
        symlink(&target, &path).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, PersistError::Symlink(_)), "{err:?}");
        assert_eq!(err.to_string(), format!("{path:?} is a symbolic link"));
    }

    #[test]
    fn a_symlinked_directory_is_followed_only_if_the_link_is_roots_or_ours() {
        let real = TempDir::new();
        write_cache(&real.join("keys.json"));
        let holder = TempDir::new();
        let link = holder.join("link");
        symlink(&real.0, &link).unwrap();
        assert!(load(&link.join("keys.json")).unwrap().is_some());
        store(&link.join("keys.json"), &encoded()).unwrap();
        if effective_uid() != 0 {
            return; // lchown needs root
        }
        // A link someone else owns (in a sticky directory, say) may point anywhere they like.
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        let err = load(&link.join("keys.json")).unwrap_err();
        assert_eq!(err.to_string(), format!("symbolic link {link:?} is owned by uid 65534, not 0"));
        assert!(matches!(
            store(&link.join("keys.json"), &encoded()).unwrap_err(),
            PersistError::LinkOwner { .. }
        ));
    }

    #[test]
    fn store_replaces_planted_symlink() {
        let dir = TempDir::new();
        let outside = TempDir::new();
        let victim = outside.join("victim");
        fs::write(&victim, b"precious").unwrap();
        let path = dir.join("keys.json");
        symlink(&victim, &path).unwrap();

        store(&path, &encoded()).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(load(&path).unwrap().unwrap().len(), 2);
        assert_eq!(dir.entries(), vec![OsString::from("keys.json")]);
    }

    #[test]
    fn temp_names_are_random() {
        let a = temp_name(OsStr::new("keys.json")).unwrap();
        let b = temp_name(OsStr::new("keys.json")).unwrap();
        assert_ne!(a, b);
        for t in [a, b] {
            let t = t.to_str().unwrap();
            let hex = t.strip_prefix(".keys.json.").and_then(|s| s.strip_suffix(".tmp")).unwrap();
            assert_eq!(hex.len(), 16, "{t}");
            assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{t}");
        }
    }

    #[test]
    fn fifo_does_not_hang() {
        let dir = TempDir::new();
        let path = dir.join("keys.json");
        let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c_path` is a NUL-terminated string that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(load(&p).map(|_| ()));
        });
        let err = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("load on a FIFO must not block")
            .unwrap_err();
        assert!(matches!(err, PersistError::NotRegular(_)), "{err:?}");
        assert_eq!(err.to_string(), format!("{path:?} is not a regular file"));
    }

    #[test]
    fn directory_is_not_a_regular_file() {
        let dir = TempDir::new();
        let path = dir.join("keys.json");
        fs::create_dir(&path).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, PersistError::NotRegular(_)), "{err:?}");
        assert!(store(&path, b"{}").is_err());
        assert_eq!(dir.entries(), vec![OsString::from("keys.json")]);
    }

    #[test]
    fn refuses_foreign_owner() {
        if effective_uid() != 0 {
            return; // chown needs root
        }
        let dir = TempDir::new();
        let path = dir.join("keys.json");
        write_cache(&path);
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, PersistError::Owner { uid: 65534, .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("{path:?} is owned by uid 65534, not 0"));
    }

    #[test]
    fn refuses_foreign_directory_owner() {
        if effective_uid() != 0 {
            return; // chown needs root
        }
        let dir = TempDir::new();
        let path = dir.join("keys.json");
        write_cache(&path);
        std::os::unix::fs::chown(&dir.0, Some(65534), Some(65534)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, PersistError::DirOwner { uid: 65534, .. }), "{err:?}");
        assert!(store(&path, b"{}").is_err());
    }

    #[test]
    fn refuses_group_writable_file() {
        let dir = TempDir::new();
        let path = dir.join("keys.json");
        write_cache(&path);
        fs::set_permissions(&path, Permissions::from_mode(0o664)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, PersistError::Writable { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("{path:?} is writable by group or others (mode 0664)"));
    }

    #[test]
    fn refuses_world_writable_directory() {
        let dir = TempDir::new();
        let path = dir.join("keys.json");
        write_cache(&path);
        fs::set_permissions(&dir.0, Permissions::from_mode(0o777)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, PersistError::DirWritable { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("directory {:?} is writable by others (mode 0777)", dir.0)
        );
        let err = store(&path, &encoded()).unwrap_err();
        assert!(matches!(err, PersistError::DirWritable { .. }), "{err:?}");
        assert_eq!(dir.entries(), vec![OsString::from("keys.json")]);
    }

    #[test]
    fn refuses_a_directory_above_that_others_can_write() {
        let top = TempDir::new();
        let dir = top.join("keys");
        fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
        let path = dir.join("keys.json");
        write_cache(&path);
        assert!(load(&path).unwrap().is_some());
        // Whoever can write `top` can rename `keys` away and put their own in its place.
        fs::set_permissions(&top.0, Permissions::from_mode(0o777)).unwrap();
        let err = load(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("directory {:?} is writable by others (mode 0777)", top.0)
        );
        assert!(store(&path, &encoded()).is_err());
        // Sticky, as /tmp is: others cannot rename or remove `keys`, which is ours.
        fs::set_permissions(&top.0, Permissions::from_mode(0o1777)).unwrap();
        assert!(load(&path).unwrap().is_some());
        store(&path, &encoded()).unwrap();
        // But the file's own directory may not be sticky and writable by others.
        fs::set_permissions(&dir, Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(load(&path).unwrap_err(), PersistError::DirWritable { .. }));
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn links_on_the_path_lead_to_a_directory_that_is_checked_too() {
        let real = TempDir::new();
        let sub = real.join("sub");
        fs::DirBuilder::new().mode(0o755).create(&sub).unwrap();
        write_cache(&sub.join("keys.json"));
        let holder = TempDir::new();
        // Relative and absolute targets, and `..` walked like any other component.
        symlink(&real.0, holder.join("abs")).unwrap();
        symlink(
            format!("../{}", real.0.file_name().unwrap().to_str().unwrap()),
            holder.join("rel"),
        )
        .unwrap();
        for path in [
            holder.join("abs").join("sub").join("keys.json"),
            holder.join("rel").join("sub").join("keys.json"),
            real.join("sub").join("..").join("sub").join("keys.json"),
        ] {
            assert!(load(&path).unwrap().is_some(), "{path:?}");
        }
        // The target's directories are checked like any other.
        fs::set_permissions(&real.0, Permissions::from_mode(0o777)).unwrap();
        let err = load(&holder.join("abs").join("sub").join("keys.json")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("directory {:?} is writable by others (mode 0777)", real.0)
        );
        fs::set_permissions(&real.0, Permissions::from_mode(0o755)).unwrap();
        // A loop ends.
        symlink(holder.join("loop"), holder.join("loop")).unwrap();
        let err = load(&holder.join("loop").join("keys.json")).unwrap_err();
        assert!(matches!(err, PersistError::TooManyLinks(_)), "{err:?}");
        // A link to a file is not a directory.
        symlink(sub.join("keys.json"), holder.join("file")).unwrap();
        let err = load(&holder.join("file").join("keys.json")).unwrap_err();
        assert!(matches!(err, PersistError::NotDir(_)), "{err:?}");
    }

    #[test]
    fn refuses_a_group_writable_directory_with_an_acl() {
        let dir = TempDir::new();
        let path = dir.join("keys.json");
        write_cache(&path);
        fs::set_permissions(&dir.0, Permissions::from_mode(0o775)).unwrap();
        // Group-writable by root's (or our) group, no ACL: accepted.
        assert!(load(&path).unwrap().is_some());
        // An access ACL giving uid 65534 rwx (the group bits become its mask, rwx).
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (0x01u16, 7u16, u32::MAX), // user::rwx
            (0x02, 7, 65534),          // user:65534:rwx
            (0x04, 5, u32::MAX),       // group::r-x
            (0x10, 7, u32::MAX),       // mask::rwx
            (0x20, 5, u32::MAX),       // other::r-x
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let c_dir = CString::new(dir.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: the strings are NUL-terminated and `acl` is readable for its length; none is
        // kept by setxattr(2).
        let rc = unsafe {
            libc::setxattr(
                c_dir.as_ptr(),
                c"system.posix_acl_access".as_ptr(),
                acl.as_ptr().cast(),
                acl.len(),
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "setxattr: {e}");
            return; // a file system without ACLs
        }
        let err = load(&path).unwrap_err();
        assert!(matches!(err, PersistError::DirAcl { .. }), "{err:?}");
        assert!(err.to_string().contains("has an access ACL"), "{err}");
    }

    #[test]
    fn refuses_group_writable_directory_of_another_group() {
        if effective_uid() != 0 {
            return; // chown needs root
        }
        let dir = TempDir::new();
        let path = dir.join("keys.json");
        write_cache(&path);
        fs::set_permissions(&dir.0, Permissions::from_mode(0o775)).unwrap();
        assert!(load(&path).unwrap().is_some(), "group 0 may write");
        std::os::unix::fs::chown(&dir.0, None, Some(65534)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, PersistError::DirGroupWritable { gid: 65534, .. }), "{err:?}");
    }

    #[test]
    fn refuses_too_large() {
        let dir = TempDir::new();
        let path = dir.join("keys.json");
        write_cache(&path);
        File::options().write(true).open(&path).unwrap().set_len(MAX_FILE + 1).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, PersistError::TooLarge(_)), "{err:?}");
        assert_eq!(err.to_string(), format!("{path:?} is larger than 4194304 bytes"));

        let big = vec![b' '; usize::try_from(MAX_FILE).unwrap() + 1];
        let err = store(&dir.join("other.json"), &big).unwrap_err();
        assert!(matches!(err, PersistError::TooLarge(_)), "{err:?}");
        assert_eq!(dir.entries(), vec![OsString::from("keys.json")]);
    }
}
