//! Opening the key cache file's directory and the file without trusting the file system:
//! the path walked from `/` one component at a time, every directory on the way checked,
//! symbolic links followed only when root's or ours, and the `*at` calls the rest is done
//! with (see the module above for the rules).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{File, Permissions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use super::{PersistError, MAX_FILE};

/// Splits `path` into its directory (`.` for a bare name) and file name.
pub(super) fn split(path: &Path) -> Result<(PathBuf, &OsStr), PersistError> {
    let name = path.file_name().ok_or_else(|| PersistError::NoFileName(path.to_path_buf()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

/// Most symbolic links followed on the way to the key cache directory (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Opens the key cache directory by walking its path from `/` one component at a time,
/// checking every directory on the way (see the module's documentation): whoever can write
/// to one of them could swap what lies below it. A symbolic link on the way is followed only
/// if it is root's or ours (it is in a directory that passed the check); its target is
/// walked the same way. `Ok(None)` when a component does not exist.
pub(super) fn open_dir(dir_path: &Path) -> Result<Option<File>, PersistError> {
    let absolute = if dir_path.is_absolute() {
        dir_path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| io_error("resolve directory", dir_path, e))?
            .join(dir_path)
    };
    // What is left to walk, the next component last.
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, &absolute);
    // The directory reached, as a path without links (for checks' messages and `..`).
    let mut walked = PathBuf::from("/");
    let mut dir = open_root()?;
    let mut links = 0;
    while let Some(name) = todo.pop() {
        check_dir(&walked, &dir, Above)?;
        let next = walked.join(&name);
        // O_PATH | O_NOFOLLOW: a symbolic link is opened as itself, and a directory is opened
        // without needing read permission on it (search permission is enough, as for a path).
        let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let opened = match open_at(&dir, &c_string(&name, &next)?, flags, 0) {
            Ok(opened) => opened,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(io_error("open directory", &next, e)),
        };
        let meta = opened.metadata().map_err(|e| io_error("stat directory", &next, e))?;
        if meta.is_dir() {
            dir = opened;
            if name == ".." {
                walked.pop();
            } else {
                walked = next;
            }
            continue;
        }
        if !meta.file_type().is_symlink() {
            return Err(PersistError::NotDir(next));
        }
        let euid = effective_uid();
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(PersistError::LinkOwner { path: next, uid: meta.uid(), euid });
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(PersistError::TooManyLinks(absolute));
        }
        let target = read_link(&opened).map_err(|e| io_error("read link", &next, e))?;
        if target.is_absolute() {
            dir = open_root()?;
            walked = PathBuf::from("/");
        }
        push_components(&mut todo, &target);
    }
    check_dir(&walked, &dir, Parent)?;
    // A descriptor that can be synced (an O_PATH one cannot).
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    let dir = open_at(&dir, c".", flags, 0).map_err(|e| io_error("open directory", &walked, e))?;
    Ok(Some(dir))
}

/// Pushes the components of `path` on `todo` so that its first component is popped first.
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    for component in path.components().rev() {
        match component {
            Component::Normal(name) => todo.push(name.to_os_string()),
            Component::ParentDir => todo.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

fn open_root() -> Result<File, PersistError> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: the literal is a NUL-terminated string; open(2) keeps no reference to it.
    let fd = unsafe { libc::open(c"/".as_ptr(), flags) };
    owned(fd).map(File::from).map_err(|e| io_error("open directory", Path::new("/"), e))
}

/// The target of the symbolic link `link` (a descriptor opened with `O_PATH | O_NOFOLLOW`).
fn read_link(link: &File) -> io::Result<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `link` is open for the duration of the call, the empty path is a
    // NUL-terminated literal, `buf` is writable for its whole length, and readlinkat(2)
    // keeps no reference to any of them.
    let n = unsafe {
        libc::readlinkat(link.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if n >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

/// Which directory [`check_dir`] checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DirRole {
    /// One the walk passes through: it may be writable by others if it is sticky.
    Above,
    /// The key cache file's own directory: never writable by others.
    Parent,
}
use DirRole::{Above, Parent};

/// Refuses a directory that anyone but root or the effective user could write to (or, for
/// a directory above, change entries of root's or ours in: a sticky one is allowed there).
fn check_dir(dir_path: &Path, dir: &File, role: DirRole) -> Result<(), PersistError> {
    let meta = dir.metadata().map_err(|e| io_error("stat directory", dir_path, e))?;
    let path = || dir_path.to_path_buf();
    if !meta.is_dir() {
        return Err(PersistError::NotDir(path()));
    }
    let euid = effective_uid();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(PersistError::DirOwner { path: path(), uid: meta.uid(), euid });
    }
    let mode = meta.mode() & 0o7777;
    if role == Above && mode & 0o1000 != 0 {
        return Ok(());
    }
    if mode & 0o002 != 0 {
        return Err(PersistError::DirWritable { path: path(), mode });
    }
    if mode & 0o020 != 0 {
        if meta.gid() != 0 && meta.gid() != effective_gid() {
            return Err(PersistError::DirGroupWritable { path: path(), gid: meta.gid(), mode });
        }
        // With an access ACL, the group bits are its mask: a named user or group may write.
        if has_access_acl(dir).map_err(|e| io_error("read the ACL of", dir_path, e))? {
            return Err(PersistError::DirAcl { path: path(), mode });
        }
    }
    Ok(())
}

/// Whether `dir` (any descriptor, `O_PATH` ones included) carries a POSIX access ACL.
fn has_access_acl(dir: &File) -> io::Result<bool> {
    let proc_path = CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both strings are NUL-terminated and outlive the call; a null buffer of size 0
    // asks for the attribute's size only, and getxattr(2) keeps no reference to anything.
    let rc = unsafe {
        libc::getxattr(
            proc_path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc >= 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

/// Refuses anything but a regular file of ours, writable only by us, of at most
/// [`MAX_FILE`] bytes.
pub(super) fn check_file(path: &Path, file: &File) -> Result<(), PersistError> {
    let meta = file.metadata().map_err(|e| io_error("stat", path, e))?;
    if !meta.is_file() {
        return Err(PersistError::NotRegular(path.to_path_buf()));
    }
    let euid = effective_uid();
    if meta.uid() != euid {
        return Err(PersistError::Owner { path: path.to_path_buf(), uid: meta.uid(), euid });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PersistError::Writable { path: path.to_path_buf(), mode });
    }
    if meta.size() > MAX_FILE {
        return Err(PersistError::TooLarge(path.to_path_buf()));
    }
    Ok(())
}

/// Reads the whole file, refusing it if it has grown past [`MAX_FILE`] since the check.
pub(super) fn read_capped(path: &Path, file: File) -> Result<Vec<u8>, PersistError> {
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(|e| io_error("read", path, e))?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > MAX_FILE) {
        return Err(PersistError::TooLarge(path.to_path_buf()));
    }
    Ok(bytes)
}

/// Sets mode 0600 whatever the umask was, writes `bytes`, syncs and closes the file.
pub(super) fn write_synced(mut file: File, bytes: &[u8]) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `.<name>.<16 random hex digits>.tmp`: a temporary name in the same directory that nobody
/// can predict.
pub(super) fn temp_name(name: &OsStr) -> Result<OsString, PersistError> {
    let mut random = [0u8; 8];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| PersistError::Random)?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(".");
    for b in random {
        tmp.push(format!("{b:02x}"));
    }
    tmp.push(".tmp");
    Ok(tmp)
}

/// `s` as a C string; `path` names it in the error if it contains a NUL byte.
pub(super) fn c_string(s: &OsStr, path: &Path) -> Result<CString, PersistError> {
    CString::new(s.as_bytes())
        .map_err(|e| io_error("use", path, io::Error::new(io::ErrorKind::InvalidInput, e)))
}

/// openat(2) relative to `dir`.
pub(super) fn open_at(
    dir: &File,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<File> {
    // SAFETY: `dir` is an open descriptor for the duration of the call, `name` is a
    // NUL-terminated string that outlives it, and openat(2) keeps no reference to either.
    let fd =
        unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, libc::c_uint::from(mode)) };
    owned(fd).map(File::from)
}

/// renameat(2) within `dir`.
pub(super) fn rename_at(dir: &File, from: &CStr, to: &CStr) -> io::Result<()> {
    let fd = dir.as_raw_fd();
    // SAFETY: `fd` is open for the duration of the call (borrowed from `dir`); both names are
    // NUL-terminated strings that outlive it, and renameat(2) keeps no reference to them.
    let rc = unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Best-effort unlinkat(2) of a temporary file in `dir`.
pub(super) fn unlink_at(dir: &File, name: &CStr) {
    // SAFETY: `dir` is an open descriptor for the duration of the call, `name` is a
    // NUL-terminated string that outlives it, and unlinkat(2) keeps no reference to either.
    let _ = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
}

/// Takes ownership of a descriptor returned by open(2)/openat(2), or the errno if it failed.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by a successful open and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub(super) fn effective_gid() -> u32 {
    // SAFETY: getegid(2) has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

pub(super) fn io_error(what: &'static str, path: &Path, source: io::Error) -> PersistError {
    PersistError::Io { what, path: path.to_path_buf(), source }
}
