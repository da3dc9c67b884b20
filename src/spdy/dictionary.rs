//! The SPDY/3 header-compression dictionary.
//!
//! Fixed by the SPDY draft 3 specification and byte-identical in moby/spdystream
//! (`spdy/dictionary.go`) and Chromium's `kV3Dictionary`. Every SPDY/3 and SPDY/3.1
//! endpoint preloads it into the zlib contexts of its name/value header blocks.

/// Length of [`DICTIONARY`] in bytes.
pub const DICTIONARY_LEN: usize = 1423;

/// Adler-32 of [`DICTIONARY`]: the DICTID a zlib stream names when it was compressed with it.
pub const DICTIONARY_ADLER32: u32 = 0xe3c6_a7c2;

/// The dictionary, assembled from 48-byte pieces so the source stays reviewable.
pub const DICTIONARY: &[u8; DICTIONARY_LEN] = &concat_bytes();

const PIECES: &[&[u8]] = &[
    b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\x00\x00\x06delete\x00\x00\x00\x05",
    b"trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-charset\x00\x00\x00\x0faccept-enco",
    b"ding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age\x00",
    b"\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control\x00\x00\x00\x0aco",
    b"nnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10content-encoding\x00\x00\x00\x10",
    b"content-language\x00\x00\x00\x0econtent-length\x00\x00\x00\x10content-lo",
    b"cation\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\x00\x00\x00\x0cconten",
    b"t-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04f",
    b"rom\x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\x00\x00\x00\x0d",
    b"if-none-match\x00\x00\x00\x08if-range\x00\x00\x00\x13if-unmodified-since",
    b"\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00",
    b"\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authoriza",
    b"tion\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\x00\x00\x00\x06serve",
    b"r\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgra",
    b"de\x00\x00\x00\x0auser-agent\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10ww",
    b"w-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200",
    b" OK\x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\x00\x0as",
    b"et-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin100101201202205",
    b"206300302303304305306307402405406407408409410411",
    b"412413414415416417502504505203 Non-Authoritative",
    b" Information204 No Content301 Moved Permanently4",
    b"00 Bad Request401 Unauthorized403 Forbidden404 N",
    b"ot Found500 Internal Server Error501 Not Impleme",
    b"nted503 Service UnavailableJan Feb Mar Apr May J",
    b"un Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, W",
    b"ed, Thu, Fri, Sat, Sun, GMTchunked,text/html,ima",
    b"ge/png,image/jpg,image/gif,application/xml,appli",
    b"cation/xhtml+xml,text/plain,text/javascript,publ",
    b"icprivatemax-age=gzip,deflate,sdchcharset=utf-8c",
    b"harset=iso-8859-1,utf-,*,enq=0.",
];

const fn concat_bytes() -> [u8; DICTIONARY_LEN] {
    let mut out = [0u8; DICTIONARY_LEN];
    let mut at = 0;
    let mut p = 0;
    while p < PIECES.len() {
        let piece = PIECES[p];
        let mut i = 0;
        while i < piece.len() {
            out[at] = piece[i];
            at += 1;
            i += 1;
        }
        p += 1;
    }
    assert!(
        at == DICTIONARY_LEN,
        "dictionary pieces must add up to 1423 bytes"
    );
    out
}
