//! MUNGE credentials, through the node's `munged`: a client encodes one for
//! its own uid; a daemon decodes it, and `munged` vouches for the uid (it
//! read it from the client's socket) and refuses a credential it has seen
//! before (replayed) or that is past its time to live (expired).
//!
//! libmunge is opened at run time (`dlopen` of `libmunge.so.2`, Debian's
//! `libmunge2`), not linked: mexec builds without it, and only a process
//! given `--munge` needs it.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a decoded credential proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The uid of the process that encoded it, as its `munged` saw it.
    pub uid: u32,
    /// That process's gid.
    pub gid: u32,
    /// The bytes encoded with it.
    pub payload: Vec<u8>,
}

/// `munge_err_t` values the callers tell apart (munge.h).
const EMUNGE_SOCKET: i32 = 6;
const EMUNGE_CRED_EXPIRED: i32 = 15;
const EMUNGE_CRED_REPLAYED: i32 = 17;

/// Why no credential came, or why one was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MungeError {
    #[error("MUNGE: cannot load libmunge ({0}); install libmunge2 (Debian) or munge-libs")]
    Library(String),
    #[error("MUNGE: the socket path {0:?} holds a NUL byte")]
    BadSocket(PathBuf),
    #[error("MUNGE: the credential is not text without NUL bytes")]
    BadCredential,
    /// libmunge's own error, with its number and message.
    #[error("MUNGE: {message}{hint}", hint = hint(*code))]
    Munge { code: i32, message: String },
}

fn hint(code: i32) -> &'static str {
    match code {
        EMUNGE_SOCKET => " (is munged running? give its socket with --munge-socket)",
        _ => "",
    }
}

impl MungeError {
    /// The credential was decoded before: someone sent it again.
    pub fn is_replayed(&self) -> bool {
        matches!(self, MungeError::Munge { code, .. } if *code == EMUNGE_CRED_REPLAYED)
    }

    /// The credential is older than its time to live.
    pub fn is_expired(&self) -> bool {
        matches!(self, MungeError::Munge { code, .. } if *code == EMUNGE_CRED_EXPIRED)
    }
}

/// A handle on one `munged`: its socket, or libmunge's default.
#[derive(Debug, Clone)]
pub struct Munge {
    socket: Option<Arc<CString>>,
    socket_path: Option<PathBuf>,
}

impl Munge {
    /// Talks to the `munged` at `socket` (default: libmunge's, usually
    /// /run/munge/munge.socket.2). Fails when libmunge cannot be loaded.
    pub fn new(socket: Option<&Path>) -> Result<Munge, MungeError> {
        ffi::library().map(|_| ())?;
        let c_socket = socket
            .map(|path| {
                CString::new(path.as_os_str().as_encoded_bytes())
                    .map_err(|_| MungeError::BadSocket(path.to_owned()))
            })
            .transpose()?;
        Ok(Munge {
            socket: c_socket.map(Arc::new),
            socket_path: socket.map(Path::to_owned),
        })
    }

    /// The socket given, for messages.
    pub fn socket(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }

    /// A credential for this process's uid, carrying `payload`. Blocks on
    /// `munged` (one local socket round trip).
    pub fn encode(&self, payload: &[u8]) -> Result<String, MungeError> {
        ffi::encode(self.socket.as_deref().map(CString::as_c_str), payload)
    }

    /// What `credential` proves; an error for a forged, replayed or
    /// expired one. Blocks on `munged`.
    pub fn decode(&self, credential: &str) -> Result<Decoded, MungeError> {
        let credential = CString::new(credential).map_err(|_| MungeError::BadCredential)?;
        ffi::decode(self.socket.as_deref().map(CString::as_c_str), &credential)
    }

    /// `encode` on tokio's blocking pool.
    pub async fn encode_async(&self, payload: Vec<u8>) -> Result<String, MungeError> {
        let munge = self.clone();
        tokio::task::spawn_blocking(move || munge.encode(&payload))
            .await
            .unwrap_or_else(|join| Err(library_gone(join)))
    }

    /// `decode` on tokio's blocking pool.
    pub async fn decode_async(&self, credential: String) -> Result<Decoded, MungeError> {
        let munge = self.clone();
        tokio::task::spawn_blocking(move || munge.decode(&credential))
            .await
            .unwrap_or_else(|join| Err(library_gone(join)))
    }
}

fn library_gone(join: tokio::task::JoinError) -> MungeError {
    MungeError::Library(format!("the call did not finish: {join}"))
}

#[cfg(unix)]
fn message(text: Option<&std::ffi::CStr>, code: i32) -> MungeError {
    MungeError::Munge {
        code,
        message: text
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("error {code}")),
    }
}

#[cfg(unix)]
mod ffi {
    //! libmunge's calls, found with `dlsym` once per process. Through libc:
    //! nix has no `dlopen`.

    use std::ffi::{c_char, c_int, c_void, CStr};
    use std::mem::transmute;
    use std::sync::OnceLock;

    use super::{message, Decoded, MungeError};

    type Ctx = *mut c_void;
    const MUNGE_OPT_SOCKET: c_int = 8;

    type CtxCreate = unsafe extern "C" fn() -> Ctx;
    type CtxDestroy = unsafe extern "C" fn(Ctx);
    type CtxSet = unsafe extern "C" fn(Ctx, c_int, ...) -> c_int;
    type CtxStrerror = unsafe extern "C" fn(Ctx) -> *const c_char;
    type Encode = unsafe extern "C" fn(*mut *mut c_char, Ctx, *const c_void, c_int) -> c_int;
    type Decode = unsafe extern "C" fn(
        *const c_char,
        Ctx,
        *mut *mut c_void,
        *mut c_int,
        *mut libc::uid_t,
        *mut libc::gid_t,
    ) -> c_int;
    type Strerror = unsafe extern "C" fn(c_int) -> *const c_char;

    pub struct Library {
        ctx_create: CtxCreate,
        ctx_destroy: CtxDestroy,
        ctx_set: CtxSet,
        ctx_strerror: CtxStrerror,
        encode: Encode,
        decode: Decode,
        strerror: Strerror,
    }

    static LIBRARY: OnceLock<Result<Library, String>> = OnceLock::new();

    pub fn library() -> Result<&'static Library, MungeError> {
        LIBRARY
            .get_or_init(load)
            .as_ref()
            .map_err(|why| MungeError::Library(why.clone()))
    }

    fn load() -> Result<Library, String> {
        // SAFETY: dlopen with a constant name; the handle is kept for the
        // life of the process (never dlclosed), so the symbols stay valid.
        let handle = unsafe { libc::dlopen(c"libmunge.so.2".as_ptr(), libc::RTLD_NOW) };
        if handle.is_null() {
            return Err(dl_error());
        }
        let symbol = |name: &CStr| {
            // SAFETY: `handle` is a live library handle.
            let found = unsafe { libc::dlsym(handle, name.as_ptr()) };
            if found.is_null() {
                Err(format!("no symbol {}", name.to_string_lossy()))
            } else {
                Ok(found)
            }
        };
        // SAFETY: each symbol has the C type munge.h gives it, which the
        // field's type spells out.
        unsafe {
            Ok(Library {
                ctx_create: transmute::<*mut c_void, CtxCreate>(symbol(c"munge_ctx_create")?),
                ctx_destroy: transmute::<*mut c_void, CtxDestroy>(symbol(c"munge_ctx_destroy")?),
                ctx_set: transmute::<*mut c_void, CtxSet>(symbol(c"munge_ctx_set")?),
                ctx_strerror: transmute::<*mut c_void, CtxStrerror>(symbol(c"munge_ctx_strerror")?),
                encode: transmute::<*mut c_void, Encode>(symbol(c"munge_encode")?),
                decode: transmute::<*mut c_void, Decode>(symbol(c"munge_decode")?),
                strerror: transmute::<*mut c_void, Strerror>(symbol(c"munge_strerror")?),
            })
        }
    }

    fn dl_error() -> String {
        // SAFETY: dlerror returns a thread-local string or null.
        let text = unsafe { libc::dlerror() };
        if text.is_null() {
            "dlopen failed".to_owned()
        } else {
            // SAFETY: non-null, NUL-terminated.
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        }
    }

    /// A munge context for one call, destroyed on drop.
    struct Context<'a> {
        lib: &'a Library,
        ctx: Ctx,
    }

    impl<'a> Context<'a> {
        fn new(lib: &'a Library, socket: Option<&CStr>) -> Result<Context<'a>, MungeError> {
            // SAFETY: plain constructor; null on allocation failure.
            let ctx = unsafe { (lib.ctx_create)() };
            if ctx.is_null() {
                return Err(MungeError::Library("munge_ctx_create failed".into()));
            }
            let context = Context { lib, ctx };
            if let Some(socket) = socket {
                // SAFETY: MUNGE_OPT_SOCKET takes one `char *`, copied.
                let rc = unsafe { (lib.ctx_set)(ctx, MUNGE_OPT_SOCKET, socket.as_ptr()) };
                if rc != 0 {
                    return Err(context.error(rc));
                }
            }
            Ok(context)
        }

        fn error(&self, code: c_int) -> MungeError {
            // SAFETY: the context's message is owned by the context and
            // read before it is destroyed; strerror's are static.
            let text = unsafe {
                let own = (self.lib.ctx_strerror)(self.ctx);
                let text = if own.is_null() {
                    (self.lib.strerror)(code)
                } else {
                    own
                };
                (!text.is_null()).then(|| CStr::from_ptr(text))
            };
            message(text, code)
        }
    }

    impl Drop for Context<'_> {
        fn drop(&mut self) {
            // SAFETY: created by ctx_create, destroyed once.
            unsafe { (self.lib.ctx_destroy)(self.ctx) }
        }
    }

    pub fn encode(socket: Option<&CStr>, payload: &[u8]) -> Result<String, MungeError> {
        let lib = library()?;
        let context = Context::new(lib, socket)?;
        let len = c_int::try_from(payload.len())
            .map_err(|_| MungeError::Library("payload too large".into()))?;
        let mut credential: *mut c_char = std::ptr::null_mut();
        // SAFETY: payload is valid for `len` bytes; on success libmunge
        // sets `credential` to a malloc'd NUL-terminated string, freed here.
        let rc =
            unsafe { (lib.encode)(&mut credential, context.ctx, payload.as_ptr().cast(), len) };
        if rc != 0 || credential.is_null() {
            return Err(context.error(rc));
        }
        // SAFETY: non-null and NUL-terminated; freed once, after the copy.
        let text = unsafe {
            let text = CStr::from_ptr(credential).to_string_lossy().into_owned();
            libc::free(credential.cast());
            text
        };
        Ok(text)
    }

    pub fn decode(socket: Option<&CStr>, credential: &CStr) -> Result<Decoded, MungeError> {
        let lib = library()?;
        let context = Context::new(lib, socket)?;
        let mut payload: *mut c_void = std::ptr::null_mut();
        let mut len: c_int = 0;
        let mut uid: libc::uid_t = 0;
        let mut gid: libc::gid_t = 0;
        // SAFETY: every out pointer is valid for a write; libmunge may
        // allocate `payload` (even on some errors), freed here either way.
        let rc = unsafe {
            (lib.decode)(
                credential.as_ptr(),
                context.ctx,
                &mut payload,
                &mut len,
                &mut uid,
                &mut gid,
            )
        };
        let bytes = if payload.is_null() {
            Vec::new()
        } else {
            // SAFETY: libmunge allocated `len` bytes at `payload`.
            unsafe {
                let bytes =
                    std::slice::from_raw_parts(payload.cast::<u8>(), len.max(0) as usize).to_vec();
                libc::free(payload);
                bytes
            }
        };
        if rc != 0 {
            return Err(context.error(rc));
        }
        Ok(Decoded {
            uid,
            gid,
            payload: bytes,
        })
    }
}

#[cfg(not(unix))]
mod ffi {
    //! MUNGE is a Unix service.

    use std::ffi::CStr;

    use super::{Decoded, MungeError};

    pub fn library() -> Result<(), MungeError> {
        Err(MungeError::Library(
            "MUNGE is not available on this system".into(),
        ))
    }

    pub fn encode(_: Option<&CStr>, _: &[u8]) -> Result<String, MungeError> {
        Err(library().unwrap_err())
    }

    pub fn decode(_: Option<&CStr>, _: &CStr) -> Result<Decoded, MungeError> {
        Err(library().unwrap_err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_that_is_not_there_is_a_clear_error() {
        let Ok(munge) = Munge::new(Some(Path::new("/nonexistent/munge.socket"))) else {
            eprintln!("SKIPPED: libmunge is not installed");
            return;
        };
        let err = munge.encode(b"x").unwrap_err();
        assert!(err.to_string().contains("--munge-socket"), "{err}");
        assert!(!err.is_replayed() && !err.is_expired());
        assert_eq!(munge.decode("a\0b"), Err(MungeError::BadCredential));
    }
}
