//! Route keys: which endpoint a request is, so the judge can score a canary per route as
//! well as per arm (one broken endpoint is not averaged away by the healthy rest). A route
//! is the method and a path template: the service's own `routes` patterns when one matches
//! (`/api/orders/:id`: a `:name` segment matches any one segment, a pattern matches its
//! path and everything under it), otherwise the first [`ROUTE_DEPTH`] segments with ids
//! folded to `:id` (numbers, UUIDs, long hex). Computing a key allocates nothing; the text
//! of a route is made once, when a route first takes its place in an arm's table.

use crate::types::fnv1a;

/// Path segments a folded route keeps.
pub const ROUTE_DEPTH: usize = 2;

/// One `routes` pattern of a service, split into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    text: String,
    segments: Vec<Option<String>>,
}

impl RoutePattern {
    /// Parses `/checkout` or `/api/orders/:id`.
    pub fn parse(text: &str) -> Result<RoutePattern, String> {
        if !text.starts_with('/') || text.len() > 256 {
            return Err(format!(
                "'{text}' must be a path starting with '/' (at most 256 bytes)"
            ));
        }
        let segments = text
            .split('/')
            .skip(1)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.starts_with(':') {
                    None
                } else {
                    Some(s.to_string())
                }
            })
            .collect();
        Ok(RoutePattern {
            text: text.trim_end_matches('/').to_string(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        if self.text.is_empty() {
            "/"
        } else {
            &self.text
        }
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        self.segments.iter().all(|want| match (want, parts.next()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(w), Some(got)) => w == got,
        })
    }
}

/// Whether a path segment is an id (folded to `:id`): all digits, a UUID, or 16 or more hex
/// digits.
fn is_id(segment: &str) -> bool {
    let b = segment.as_bytes();
    if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    uuid || (b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit))
}

/// One request's route, to hash or to name.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    method: &'a str,
    path: &'a str,
    pattern: Option<&'a RoutePattern>,
}

impl<'a> Route<'a> {
    /// The route of `method` `path` among `patterns`.
    pub fn of(method: &'a str, path: &'a str, patterns: &'a [RoutePattern]) -> Route<'a> {
        let pattern = patterns.iter().find(|p| p.matches(path));
        Route {
            method,
            path,
            pattern,
        }
    }

    fn folded(&self) -> impl Iterator<Item = &'a str> {
        self.path
            .split('/')
            .filter(|s| !s.is_empty())
            .take(ROUTE_DEPTH)
            .map(|s| if is_id(s) { ":id" } else { s })
    }

    /// Its key (never 0, which marks a free place in a route table).
    pub fn key(&self) -> u64 {
        let mut h = fnv1a(self.method.as_bytes());
        match self.pattern {
            Some(p) => h ^= fnv1a(p.as_str().as_bytes()).rotate_left(1),
            None => {
                for (i, s) in self.folded().enumerate() {
                    h ^= fnv1a(s.as_bytes()).rotate_left(i as u32 + 2);
                }
            }
        }
        h.max(1)
    }

    /// Its text: `POST /checkout`, `GET /api/:id`.
    pub fn label(&self) -> String {
        let mut out = String::with_capacity(32);
        out.push_str(self.method);
        out.push(' ');
        match self.pattern {
            Some(p) => out.push_str(p.as_str()),
            None => {
                for s in self.folded() {
                    out.push('/');
                    out.push_str(s);
                }
                if out.ends_with(' ') {
                    out.push('/');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fold_and_depth_is_bounded() {
        let label = |m, p| Route::of(m, p, &[]).label();
        assert_eq!(label("GET", "/users/42/orders/7"), "GET /users/:id");
        assert_eq!(label("GET", "/"), "GET /");
        assert_eq!(
            label("GET", "/o/123e4567-e89b-12d3-a456-426614174000"),
            "GET /o/:id"
        );
        assert_eq!(label("GET", "/o/deadbeefdeadbeef"), "GET /o/:id");
        assert_eq!(label("GET", "/o/cafe"), "GET /o/cafe");
        assert_eq!(
            Route::of("GET", "/users/1", &[]).key(),
            Route::of("GET", "/users/2/x", &[]).key()
        );
        assert_ne!(
            Route::of("GET", "/checkout", &[]).key(),
            Route::of("POST", "/checkout", &[]).key()
        );
    }

    #[test]
    fn patterns_win_when_they_match() {
        let patterns = [
            RoutePattern::parse("/api/orders/:id").unwrap(),
            RoutePattern::parse("/checkout").unwrap(),
        ];
        let label = |m, p| Route::of(m, p, &patterns).label();
        assert_eq!(label("GET", "/api/orders/abc/items"), "GET /api/orders/:id");
        assert_eq!(label("POST", "/checkout"), "POST /checkout");
        assert_eq!(label("GET", "/api/orders"), "GET /api/orders");
        assert!(RoutePattern::parse("checkout").is_err());
    }
}
