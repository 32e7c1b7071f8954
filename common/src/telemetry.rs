//! One way to set up logging for every binary.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format `{other}` (use text or json)")),
        }
    }
}

/// Installs the global subscriber, writing to stderr.
///
/// The filter comes from `MEXEC_LOG` (same syntax as `RUST_LOG`), else
/// `default_level` for our crates with dependency noise (h2, hyper, tower)
/// kept at warnings.
pub fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = std::env::var("MEXEC_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| {
            EnvFilter::new(format!(
                "warn,mexec={default_level},mexecd={default_level},mexec_server={default_level},mexec_client={default_level},mexec_gatekeeper={default_level}"
            ))
        });
    // Colour only for a person at a terminal: a log file or journald
    // gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second call (tests start several servers in one process) is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A field a client sent (a job id, a user or host name), for a log line:
/// control characters and backslashes escaped as Rust writes them (`\n`,
/// `\u{1b}`, `\\`), so a newline in a job id cannot start a forged line
/// in the text format, nor an escape sequence rewrite a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if c.is_control() || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_in_logged_fields_are_escaped() {
        let forged = "j1\n2025-01-01T00:00:00Z  INFO job finished user=root\x1b[2K\r\\n";
        let shown = Escaped(forged).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(
            shown,
            "j1\\n2025-01-01T00:00:00Z  INFO job finished user=root\\u{1b}[2K\\r\\\\n"
        );
        assert_eq!(Escaped("gcc-12 ü").to_string(), "gcc-12 ü");
    }
}
