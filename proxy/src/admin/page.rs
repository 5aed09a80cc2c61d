//! The status page (`GET /` on the admin port): one self-contained HTML document, with no
//! external assets, that polls `/status` and `/status/history` and redraws in place.
//!
//! It holds no data itself. Where reads need the admin token (an admin port beyond
//! loopback), the page takes it from the URL fragment (`/#token=...`, never sent to the
//! server and removed from the address bar at once) or asks for it, keeps it in the tab's
//! `sessionStorage` and sends it as `Authorization: Bearer`. Everything it draws from
//! `/status` is inserted as text, never as markup.

/// The document.
pub const HTML: &str = include_str!("page.html");

/// Only the page's own inline script and style, and reads of its own origin.
pub const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // The SVG namespace is a name, not a fetch.
        let html = HTML.replace("http://www.w3.org/2000/svg", "");
        for needle in ["http://", "https://", "src=\"", "<link", "@import", "url("] {
            assert!(
                !html.contains(needle),
                "the status page must work offline, but it contains {needle:?}"
            );
        }
        assert!(
            !HTML.contains("innerHTML"),
            "status values go in as text, never as markup"
        );
    }
}
