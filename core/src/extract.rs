//! Finding the token in a request's headers.

use crate::error::VerifyError;

/// The header Cloudflare Access puts the application token in.
pub const HEADER: &str = "Cf-Access-Jwt-Assertion";
/// The cookie browsers also carry it in; read only when the header is absent.
pub const COOKIE: &[u8] = b"CF_Authorization";

/// The value of cookie `name` in one `Cookie` header value (`a=1; b=2`), if present.
pub fn cookie_value<'a>(cookie_header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    cookie_header.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (k, v) = (&pair[..eq], &pair[eq + 1..]);
        (k.trim_ascii() == name).then(|| {
            let v = v.trim_ascii();
            // RFC 6265 allows the value in double quotes.
            v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v)
        })
    })
}

/// Picks the token from the request headers, given as (name, value) pairs in order: the
/// `Cf-Access-Jwt-Assertion` header when present, else the `CF_Authorization` cookie. A
/// request that is ambiguous is malformed: two assertion headers, or (without the header)
/// two `CF_Authorization` cookies, in one `Cookie` header or in several (an upstream that
/// takes the last one would see another token than the one verified). The token is
/// returned as sent: [`crate::token::ascii`] checks it before it is parsed (a cache hit is
/// the very bytes of a token that passed that check, so it is not checked again).
pub fn find_token<'a, I>(headers: I) -> Result<Option<&'a [u8]>, VerifyError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut header = None;
    let mut cookie = None;
    let mut cookies = 0usize;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(HEADER.as_bytes()) {
            if header.is_some() {
                return Err(VerifyError::Malformed("more than one Cf-Access-Jwt-Assertion header"));
            }
            header = Some(value);
        } else if name.eq_ignore_ascii_case(b"cookie") {
            for value in cookie_values(value, COOKIE) {
                cookies += 1;
                cookie.get_or_insert(value);
            }
        }
    }
    let token = match (header, cookie) {
        (Some(h), _) => h,
        (None, Some(_)) if cookies > 1 => {
            return Err(VerifyError::Malformed("more than one CF_Authorization cookie"))
        }
        (None, Some(c)) => c,
        (None, None) => return Ok(None),
    };
    Ok(Some(token))
}

/// Every value of cookie `name` in one `Cookie` header value.
fn cookie_values<'a>(cookie_header: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    cookie_header.split(|b| *b == b';').filter_map(move |pair| cookie_value(pair, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies() {
        assert_eq!(cookie_value(b"a=1; CF_Authorization=tok; b=2", COOKIE), Some(&b"tok"[..]));
        assert_eq!(cookie_value(b"CF_Authorization=\"tok\"", COOKIE), Some(&b"tok"[..]));
        assert_eq!(cookie_value(b"cf_authorization=tok", COOKIE), None);
        assert_eq!(cookie_value(b"XCF_Authorization=tok", COOKIE), None);
        assert_eq!(cookie_value(b"CF_Authorization", COOKIE), None);
        assert_eq!(cookie_value(b"CF_Authorization=", COOKIE), Some(&b""[..]));
        assert_eq!(cookie_value(b"", COOKIE), None);
    }

    #[test]
    fn header_wins_over_cookie() {
        let h: Vec<(&[u8], &[u8])> =
            vec![(b"Cookie", b"CF_Authorization=c"), (b"cf-access-jwt-assertion", b"h")];
        assert_eq!(find_token(h), Ok(Some(&b"h"[..])));
        let c: Vec<(&[u8], &[u8])> = vec![(b"Cookie", b"x=1"), (b"Cookie", b"CF_Authorization=c")];
        assert_eq!(find_token(c), Ok(Some(&b"c"[..])));
        let none: Vec<(&[u8], &[u8])> = vec![(b"Host", b"x")];
        assert_eq!(find_token(none), Ok(None));
        let two: Vec<(&[u8], &[u8])> =
            vec![(b"Cf-Access-Jwt-Assertion", b"a"), (b"Cf-Access-Jwt-Assertion", b"b")];
        assert!(find_token(two).is_err());
    }

    #[test]
    fn two_cookies_are_ambiguous_unless_the_header_decides() {
        let malformed = Err(VerifyError::Malformed("more than one CF_Authorization cookie"));
        let one_header: Vec<(&[u8], &[u8])> =
            vec![(b"Cookie", b"CF_Authorization=a; x=1; CF_Authorization=b")];
        assert_eq!(find_token(one_header), malformed);
        let two_headers: Vec<(&[u8], &[u8])> =
            vec![(b"Cookie", b"CF_Authorization=a"), (b"Cookie", b"CF_Authorization=b")];
        assert_eq!(find_token(two_headers.clone()), malformed);
        let mut with_header = two_headers;
        with_header.push((b"Cf-Access-Jwt-Assertion", b"h"));
        assert_eq!(find_token(with_header), Ok(Some(&b"h"[..])));
    }
}
