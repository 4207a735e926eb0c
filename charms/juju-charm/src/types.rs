//! The small value types the hook tools speak in: statuses, ports, log levels, relation
//! references, databags — each with the exact text form Juju uses on the command line.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A relation databag: Juju stores string → string maps (nested values are JSON strings).
pub type Databag = BTreeMap<String, String>;

/// Workload status names. A charm can set the first four; `error` and `unknown` are Juju's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusName {
    Active,
    Blocked,
    Maintenance,
    Waiting,
    Error,
    #[default]
    Unknown,
}

impl StatusName {
    /// The word Juju uses (`status-set active`, `status-get` output).
    pub fn as_str(self) -> &'static str {
        match self {
            StatusName::Active => "active",
            StatusName::Blocked => "blocked",
            StatusName::Maintenance => "maintenance",
            StatusName::Waiting => "waiting",
            StatusName::Error => "error",
            StatusName::Unknown => "unknown",
        }
    }

    /// Whether `status-set` accepts it (Juju refuses `error` and `unknown`).
    pub fn settable(self) -> bool {
        matches!(
            self,
            StatusName::Active
                | StatusName::Blocked
                | StatusName::Maintenance
                | StatusName::Waiting
        )
    }
}

impl fmt::Display for StatusName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StatusName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "active" => StatusName::Active,
            "blocked" => StatusName::Blocked,
            "maintenance" => StatusName::Maintenance,
            "waiting" => StatusName::Waiting,
            "error" => StatusName::Error,
            "unknown" => StatusName::Unknown,
            other => return Err(Error::Invalid(format!("unknown status {other:?}"))),
        })
    }
}

/// A unit's or application's workload status: a name and a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Status {
    pub name: StatusName,
    pub message: String,
}

impl Status {
    pub fn new(name: StatusName, message: impl Into<String>) -> Self {
        Status {
            name,
            message: message.into(),
        }
    }
    pub fn active(message: impl Into<String>) -> Self {
        Self::new(StatusName::Active, message)
    }
    pub fn blocked(message: impl Into<String>) -> Self {
        Self::new(StatusName::Blocked, message)
    }
    pub fn maintenance(message: impl Into<String>) -> Self {
        Self::new(StatusName::Maintenance, message)
    }
    pub fn waiting(message: impl Into<String>) -> Self {
        Self::new(StatusName::Waiting, message)
    }
    /// What Juju shows after a failed hook (charms cannot set it).
    pub fn error(message: impl Into<String>) -> Self {
        Self::new(StatusName::Error, message)
    }
    pub fn unknown() -> Self {
        Self::new(StatusName::Unknown, "")
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}: {}", self.name, self.message)
        }
    }
}

/// `juju-log --log-level` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "TRACE",
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warning => "WARNING",
            LogLevel::Error => "ERROR",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        // Juju's logger takes the level names in any case; CRITICAL is logged as ERROR.
        Ok(match s.to_ascii_uppercase().as_str() {
            "TRACE" => LogLevel::Trace,
            "DEBUG" => LogLevel::Debug,
            "INFO" => LogLevel::Info,
            "WARNING" | "WARN" => LogLevel::Warning,
            "ERROR" | "CRITICAL" => LogLevel::Error,
            _ => return Err(Error::Invalid(format!("unknown log level {s:?}"))),
        })
    }
}

/// A relation as the hook tools name it: `endpoint:id` (`db:3`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RelationId {
    pub endpoint: String,
    pub id: u32,
}

impl RelationId {
    pub fn new(endpoint: impl Into<String>, id: u32) -> Self {
        RelationId {
            endpoint: endpoint.into(),
            id,
        }
    }
}

impl fmt::Display for RelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.endpoint, self.id)
    }
}

impl FromStr for RelationId {
    type Err = Error;
    /// Parses `endpoint:id`, the form `relation-ids` prints and `JUJU_RELATION_ID` holds.
    fn from_str(s: &str) -> Result<Self> {
        let (endpoint, id) = s
            .rsplit_once(':')
            .ok_or_else(|| Error::Invalid(format!("relation id {s:?} is not endpoint:id")))?;
        let id = id
            .parse()
            .map_err(|_| Error::Invalid(format!("relation id {s:?} has no number after ':'")))?;
        if endpoint.is_empty() {
            return Err(Error::Invalid(format!("relation id {s:?} has no endpoint")));
        }
        Ok(RelationId::new(endpoint, id))
    }
}

/// IP protocol of an opened port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// A port or port range, written as `open-port` takes it: `8000/tcp`, `9000-9010/udp`, `icmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    pub protocol: Protocol,
    /// `None` only for ICMP.
    pub port: Option<u16>,
    /// The last port of a range.
    pub to_port: Option<u16>,
}

impl Port {
    pub fn tcp(port: u16) -> Self {
        Port {
            protocol: Protocol::Tcp,
            port: Some(port),
            to_port: None,
        }
    }
    pub fn udp(port: u16) -> Self {
        Port {
            protocol: Protocol::Udp,
            port: Some(port),
            to_port: None,
        }
    }
    pub fn icmp() -> Self {
        Port {
            protocol: Protocol::Icmp,
            port: None,
            to_port: None,
        }
    }
    /// A range `from-to` of the same protocol as `self`.
    pub fn to(mut self, to_port: u16) -> Self {
        self.to_port = Some(to_port);
        self
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.to_port) {
            (None, _) => f.write_str(self.protocol.as_str()),
            (Some(p), None) => write!(f, "{p}/{}", self.protocol.as_str()),
            (Some(p), Some(t)) => write!(f, "{p}-{t}/{}", self.protocol.as_str()),
        }
    }
}

impl FromStr for Port {
    type Err = Error;
    /// Parses what `open-port` takes and `opened-ports` prints: `80`, `80/tcp`,
    /// `8000-8999/udp`, `icmp` (a missing protocol means TCP, as in Juju).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Invalid(format!("invalid port {s:?}"));
        if s == "icmp" {
            return Ok(Port::icmp());
        }
        let (range, protocol) = match s.split_once('/') {
            Some((r, "tcp")) => (r, Protocol::Tcp),
            Some((r, "udp")) => (r, Protocol::Udp),
            Some(_) => return Err(bad()),
            None => (s, Protocol::Tcp),
        };
        let number = |t: &str| -> Result<u16> {
            match t.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad()),
            }
        };
        let (port, to_port) = match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if b < a {
                    return Err(bad());
                }
                (a, Some(b))
            }
            None => (number(range)?, None),
        };
        Ok(Port {
            protocol,
            port: Some(port),
            to_port,
        })
    }
}
