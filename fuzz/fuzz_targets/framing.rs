//! The HTTP/1 framing check on raw connection bytes.
//!
//! The first input byte picks where to split the rest into two reads. Invariants:
//! never panics; the verdict (which violation, or none) does not depend on how the
//! bytes are split into reads; an open or refused head starts inside the input.
#![no_main]

use cartguard::framing::{HeadCheck, HeadStart, Scan};
use libfuzzer_sys::fuzz_target;

fn verdict(s: &Scan) -> Option<(u16, &'static str)> {
    match s {
        Scan::Refused(v, _) => Some((v.status, v.reason)),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let whole = HeadCheck::new(256).scan(bytes);
    if let Scan::Open(HeadStart::At(k)) | Scan::Refused(_, HeadStart::At(k)) = whole {
        assert!(k < bytes.len(), "head start {k} past the input");
    }
    let cut = usize::from(cut).min(bytes.len());
    let mut c = HeadCheck::new(256);
    let first = c.scan(&bytes[..cut]);
    let split = if verdict(&first).is_some() || matches!(first, Scan::BadBody(_)) { first } else { c.scan(&bytes[cut..]) };
    assert_eq!(verdict(&whole), verdict(&split), "{:?} split at {cut}", String::from_utf8_lossy(bytes));
});
