//! Typed pieces of a QEMU command line, checked as they are added.
//!
//! QEMU options such as `-blockdev driver=qcow2,node-name=disk0,...` are
//! key=value lists in which a `,` inside a value must be doubled. Building
//! them by `format!` invites a path with a comma (or a newline) to inject
//! extra options. [`OptList`] refuses a bad key and escapes every value at
//! insert time, in the spirit of linux-loader's `Cmdline`; [`Argv`] collects
//! the finished arguments.

use std::fmt;
use std::path::Path;

/// Why an argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// A key or driver name is empty or holds a character QEMU treats specially.
    #[error("Invalid option key {0:?}")]
    InvalidKey(String),
    /// A value holds a NUL, newline or other control character.
    #[error("Value of {key} contains a control character")]
    ControlCharacter {
        /// The key whose value was refused.
        key: String,
    },
    /// A path is not valid UTF-8, so it cannot be passed through QEMU's parser.
    #[error("Path for {key} is not valid UTF-8: {path}")]
    NotUtf8 {
        /// The key whose value was refused.
        key: String,
        /// The path, lossily printed.
        path: String,
    },
}

fn check_key(key: &str) -> Result<(), ArgError> {
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ArgError::InvalidKey(key.to_string()))
    }
}

fn check_value(key: &str, value: &str) -> Result<(), ArgError> {
    if value.chars().any(char::is_control) {
        return Err(ArgError::ControlCharacter {
            key: key.to_string(),
        });
    }
    Ok(())
}

/// A QEMU `head,key=value,...` option list with commas in values escaped.
///
/// ```
/// use amirun::machine::qemu_opts::OptList;
/// let o = OptList::new("file").unwrap()
///     .set("id", "serial0").unwrap()
///     .set("path", "/tmp/a,b.log").unwrap();
/// assert_eq!(o.to_string(), "file,id=serial0,path=/tmp/a,,b.log");
/// assert!(OptList::new("file").unwrap().set("bad,key", "x").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptList {
    text: String,
}

impl OptList {
    /// A list that starts with a bare word (a driver, machine type or backend).
    pub fn new(head: &str) -> Result<Self, ArgError> {
        check_key(head)?;
        Ok(Self {
            text: head.to_string(),
        })
    }

    /// A list that starts with a key=value pair (for options with no head word).
    pub fn with(key: &str, value: impl fmt::Display) -> Result<Self, ArgError> {
        let mut list = Self {
            text: String::new(),
        };
        list.push(key, &value.to_string())?;
        Ok(list)
    }

    fn push(&mut self, key: &str, value: &str) -> Result<(), ArgError> {
        check_key(key)?;
        check_value(key, value)?;
        if !self.text.is_empty() {
            self.text.push(',');
        }
        self.text.push_str(key);
        self.text.push('=');
        self.text.push_str(&value.replace(',', ",,"));
        Ok(())
    }

    /// Adds `key=value`.
    pub fn set(mut self, key: &str, value: impl fmt::Display) -> Result<Self, ArgError> {
        self.push(key, &value.to_string())?;
        Ok(self)
    }

    /// Adds `key=on` or `key=off`.
    pub fn switch(self, key: &str, on: bool) -> Result<Self, ArgError> {
        self.set(key, if on { "on" } else { "off" })
    }

    /// Adds `key=PATH`, refusing paths that are not UTF-8.
    pub fn path(self, key: &str, path: &Path) -> Result<Self, ArgError> {
        let text = path_str(key, path)?;
        self.set(key, text)
    }
}

impl fmt::Display for OptList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A path as UTF-8, or the error that names `key`.
pub(crate) fn path_str<'a>(key: &str, path: &'a Path) -> Result<&'a str, ArgError> {
    path.to_str().ok_or_else(|| ArgError::NotUtf8 {
        key: key.to_string(),
        path: path.display().to_string(),
    })
}

/// Quotes one word for the POSIX-shell-like parser (`g_shell_parse_argv`)
/// that slirp uses on a `guestfwd=...-cmd:` command line.
pub(crate) fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@+%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// An argument vector under construction: `-flag` and `-option VALUE` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Argv {
    args: Vec<String>,
}

impl Argv {
    /// An empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a bare flag such as `-nodefaults`.
    pub fn flag(&mut self, flag: &'static str) -> &mut Self {
        self.args.push(flag.to_string());
        self
    }

    /// Adds `-option VALUE`, VALUE being a checked [`OptList`].
    pub fn opt(&mut self, option: &'static str, value: OptList) -> &mut Self {
        self.args.push(option.to_string());
        self.args.push(value.to_string());
        self
    }

    /// Adds `-option VALUE` for options whose value is not a key=value list
    /// (`-m 1024`, `-append "console=ttyS0"`); control characters are refused.
    pub fn raw(&mut self, option: &'static str, value: &str) -> Result<&mut Self, ArgError> {
        check_value(option, value)?;
        self.args.push(option.to_string());
        self.args.push(value.to_string());
        Ok(self)
    }

    /// Adds `-option PATH` (`-kernel`, `-initrd`), refusing non-UTF-8 paths.
    pub fn path(&mut self, option: &'static str, path: &Path) -> Result<&mut Self, ArgError> {
        let text = path_str(option, path)?.to_string();
        self.raw(option, &text)
    }

    /// The finished arguments.
    pub fn into_vec(self) -> Vec<String> {
        self.args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_escape_commas_and_refuse_control_characters() {
        let o = OptList::new("user")
            .unwrap()
            .set("id", "net0")
            .unwrap()
            .set("guestfwd", "a,b")
            .unwrap();
        assert_eq!(o.to_string(), "user,id=net0,guestfwd=a,,b");
        assert_eq!(
            OptList::new("x").unwrap().set("path", "a\nb").unwrap_err(),
            ArgError::ControlCharacter { key: "path".into() }
        );
        assert!(OptList::new("").is_err());
        assert!(OptList::new("a=b").is_err());
        assert_eq!(
            OptList::with("type", 1).unwrap().to_string(),
            "type=1".to_string()
        );
    }

    #[test]
    fn non_utf8_paths_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\xff"));
        assert!(matches!(
            OptList::new("file").unwrap().path("filename", p),
            Err(ArgError::NotUtf8 { .. })
        ));
        assert!(Argv::new().path("-kernel", p).is_err());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/usr/bin/amirun"), "/usr/bin/amirun");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
