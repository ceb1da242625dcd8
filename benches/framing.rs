//! The HTTP/1 framing check on a typical request head (what a browser or the
//! integration sends), the per-request cost it adds before hyper parses the head.
//!
//!   cargo bench --bench framing
//!
//! divan prints fastest / slowest / median / mean; the median is the figure to quote.

use cartguard::framing::{HeadCheck, Scan};
use divan::black_box;

fn main() {
    divan::main();
}

const HEAD: &[u8] = b"GET /wp-json/wc/v3/orders?per_page=20&page=2 HTTP/1.1\r\n\
Host: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Authorization: Basic YWxpY2U6YWxpY2UtcGFzcw==\r\n\
Cookie: woocommerce_items_in_cart=1; wp_woocommerce_session_abc=def\r\n\
Connection: keep-alive\r\n\r\n";

/// One ~560-byte head, scanned in one read.
#[divan::bench]
fn typical_head() -> bool {
    let mut check = HeadCheck::new(16384);
    black_box(check.scan(black_box(HEAD))) == Scan::Clean
}
