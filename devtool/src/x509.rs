//! A minimal DER encoder for one self-signed X.509 v3 certificate per key.

use crate::KeyPair;

/// sha256WithRSAEncryption, 1.2.840.113549.1.1.11
const OID_SHA256_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
/// id-at-commonName, 2.5.4.3
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn sig_alg() -> Vec<u8> {
    seq(&[&tlv(0x06, OID_SHA256_WITH_RSA), &[0x05, 0x00]])
}

fn name(cn: &str) -> Vec<u8> {
    let atv = seq(&[&tlv(0x06, OID_COMMON_NAME), &tlv(0x0c, cn.as_bytes())]);
    seq(&[&tlv(0x31, &atv)])
}

/// The DER certificate: subject = issuer = `CN=cf-access-dev`, validity
/// 2020-01-01 .. 2049-12-31, serial from the kid. Deterministic per key
/// (RSA PKCS#1 v1.5 signatures are deterministic).
pub(crate) fn self_signed(key: &KeyPair) -> Vec<u8> {
    // Positive, minimal 16-byte serial: first byte in 0x01..=0x7f.
    let mut serial = [0u8; 16];
    for (i, s) in serial.iter_mut().enumerate() {
        *s = u8::from_str_radix(&key.kid()[2 * i..2 * i + 2], 16).unwrap_or(1);
    }
    serial[0] = (serial[0] & 0x7f) | 0x01;

    let version = tlv(0xa0, &tlv(0x02, &[0x02]));
    let validity = seq(&[&tlv(0x17, b"200101000000Z"), &tlv(0x17, b"491231235959Z")]);
    let dn = name("cf-access-dev");
    let tbs = seq(&[
        &version,
        &tlv(0x02, &serial),
        &sig_alg(),
        &dn,
        &validity,
        &dn,
        &key.public_key_der(),
    ]);
    let sig = key.sign("RS256", &tbs);
    let mut bits = vec![0u8];
    bits.extend_from_slice(&sig);
    seq(&[&tbs, &sig_alg(), &tlv(0x03, &bits)])
}

/// (tbs DER, signature bytes) of a certificate made by [`self_signed`].
#[cfg(test)]
pub(crate) fn split_for_test(cert: &[u8]) -> (&[u8], &[u8]) {
    fn header(b: &[u8]) -> (usize, usize) {
        // (header length, content length)
        if b[1] < 0x80 {
            (2, b[1] as usize)
        } else {
            let n = (b[1] & 0x7f) as usize;
            let len = b[2..2 + n].iter().fold(0usize, |a, x| (a << 8) | *x as usize);
            (2 + n, len)
        }
    }
    let (h, _) = header(cert);
    let body = &cert[h..];
    let (th, tl) = header(body);
    let tbs = &body[..th + tl];
    let rest = &body[th + tl..];
    let (ah, al) = header(rest);
    let bitstring = &rest[ah + al..];
    let (bh, _) = header(bitstring);
    (tbs, &bitstring[bh + 1..])
}
