//! One way to show an error with its causes, for log lines and collector
//! errors: `outer: cause: root cause`. Many errors (`tokio_postgres`,
//! `reqwest`, `hyper`) keep the useful part ("Connection refused") in a
//! source that their `Display` leaves out.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources.
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot poll")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn shows_every_cause() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ));
        assert_eq!(Chain(&e).to_string(), "cannot poll: Connection refused");
    }
}
