//! Why a request was let in or not.

use thiserror::Error;

/// The verdict of one request, as exposed to operators (`$cf_access_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    NoToken,
    Malformed,
    BadAlg,
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    BadIssuer,
    BadAudience,
    NoKeys,
    /// The token verified, but a `cf_access_require` rule did not hold.
    NotAllowed,
    /// The token verified, but the identity it needs could not be had (get-identity failed
    /// or answered something unusable) and `cf_access_identity_failure` is `deny`.
    IdentityUnavailable,
}

impl Status {
    /// Every status, in the order of [`Status::index`].
    pub const ALL: [Status; 13] = [
        Status::Ok,
        Status::NoToken,
        Status::Malformed,
        Status::BadAlg,
        Status::UnknownKid,
        Status::BadSignature,
        Status::Expired,
        Status::NotYetValid,
        Status::BadIssuer,
        Status::BadAudience,
        Status::NoKeys,
        Status::NotAllowed,
        Status::IdentityUnavailable,
    ];

    /// A dense index (`Status::ALL[s.index()] == s`), for per-status counters.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The short, stable name used in variables and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NoToken => "no_token",
            Status::Malformed => "malformed",
            Status::BadAlg => "bad_alg",
            Status::UnknownKid => "unknown_kid",
            Status::BadSignature => "bad_signature",
            Status::Expired => "expired",
            Status::NotYetValid => "not_yet_valid",
            Status::BadIssuer => "bad_issuer",
            Status::BadAudience => "bad_audience",
            Status::NoKeys => "no_keys",
            Status::NotAllowed => "not_allowed",
            Status::IdentityUnavailable => "identity_unavailable",
        }
    }
}

/// Why a token was refused. Messages are lowercase and say what an operator needs to know;
/// they never echo token contents (which are attacker-controlled).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("no token in the request")]
    NoToken,
    #[error("token too large ({0} bytes)")]
    TooLarge(usize),
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported algorithm, only RS256 is accepted")]
    BadAlg,
    #[error("no key set loaded yet")]
    NoKeys,
    #[error("token kid is not in the key set")]
    UnknownKid,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid ({0} is in the future)")]
    NotYetValid(&'static str),
    #[error("wrong issuer")]
    BadIssuer,
    #[error("wrong audience")]
    BadAudience,
    #[error("not an application token (type is not \"app\")")]
    NotAppToken,
}

impl VerifyError {
    pub const fn status(&self) -> Status {
        match self {
            VerifyError::NoToken => Status::NoToken,
            VerifyError::TooLarge(_) | VerifyError::Malformed(_) => Status::Malformed,
            VerifyError::BadAlg => Status::BadAlg,
            VerifyError::NoKeys => Status::NoKeys,
            VerifyError::UnknownKid => Status::UnknownKid,
            VerifyError::BadSignature => Status::BadSignature,
            VerifyError::Expired => Status::Expired,
            VerifyError::NotYetValid(_) => Status::NotYetValid,
            VerifyError::BadIssuer => Status::BadIssuer,
            VerifyError::BadAudience | VerifyError::NotAppToken => Status::BadAudience,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_all() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.index(), i, "{}", s.as_str());
        }
    }
}
