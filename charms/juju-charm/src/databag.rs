//! Relation databags as types. Juju stores string → string maps, so a struct is written one
//! field per key: strings as they are (what the COS libraries and most interfaces expect),
//! everything else (numbers, booleans, lists, objects) JSON-encoded, as ops does; `None`
//! is written as `""`, which `relation-set` takes as "delete the key". Reading accepts the
//! same: a field typed as a string gets the raw text, any other type parses it as JSON.

use serde::de::value::{Error as DeError, MapDeserializer};
use serde::de::{DeserializeOwned, Deserializer, Error as _, IntoDeserializer, Visitor};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::types::Databag;

/// A databag from pairs: `databag([("url", "http://x:8000")])`.
pub fn databag<I, K, V>(pairs: I) -> Databag
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// Writes a serializable struct (or map) as a databag.
pub fn to_databag<T: Serialize + ?Sized>(value: &T) -> Result<Databag> {
    let value = serde_json::to_value(value).map_err(|e| Error::Databag(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(Error::Databag(format!(
            "only a struct or map can be a databag, not {}",
            kind(&value)
        )));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, text)
        })
        .collect())
}

/// Reads a databag as a type. Missing keys are `None` for `Option` fields (or their
/// `#[serde(default)]`), unknown keys are ignored.
pub fn from_databag<T: DeserializeOwned>(bag: &Databag) -> Result<T> {
    let entries = bag
        .iter()
        .map(|(k, v)| (k.as_str(), BagValue { key: k, raw: v }));
    T::deserialize(MapDeserializer::<_, DeError>::new(entries))
        .map_err(|e| Error::Databag(e.to_string()))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// One databag value, deserialized as raw text where a string is wanted and as JSON
/// otherwise.
struct BagValue<'a> {
    key: &'a str,
    raw: &'a str,
}

impl BagValue<'_> {
    fn json(&self) -> Result<Value, DeError> {
        serde_json::from_str(self.raw)
            .map_err(|_| DeError::custom(format!("key {:?}: {:?} is not JSON", self.key, self.raw)))
    }

    fn wrap(&self, e: impl std::fmt::Display) -> DeError {
        DeError::custom(format!("key {:?}: {e}", self.key))
    }
}

impl<'de> IntoDeserializer<'de, DeError> for BagValue<'_> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

// Every type other than strings, options, newtypes and enums goes through JSON.
macro_rules! via_json {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, DeError> {
            self.json()?.$method($($arg,)* visitor).map_err(|e| self.wrap(e))
        }
    )*};
}

impl<'de> Deserializer<'de> for BagValue<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // Untyped (maps of values, flatten): JSON when it parses, else the text.
        match serde_json::from_str::<Value>(self.raw) {
            Ok(v) => v.deserialize_any(visitor).map_err(|e| self.wrap(e)),
            Err(_) => visitor.visit_str(self.raw),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(self.raw)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(self.raw)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(self.raw)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(self.raw)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // An empty value is what a deleted key reads as.
        if self.raw.is_empty() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // Unit variants are written as bare words (`prefill`); others as JSON.
        match serde_json::from_str::<Value>(self.raw) {
            Ok(Value::Object(m)) => Value::Object(m)
                .deserialize_enum(name, variants, visitor)
                .map_err(|e| self.wrap(e)),
            Ok(Value::String(s)) => visitor.visit_enum(s.as_str().into_deserializer()),
            _ => visitor.visit_enum(self.raw.into_deserializer()),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    via_json! {
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Role {
        Prefill,
        Decode,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Worker {
        url: String,
        role: Role,
        port: u16,
        ready: bool,
        kv_url: Option<String>,
        model: Option<String>,
        tags: Vec<String>,
        limits: BTreeMap<String, u32>,
        #[serde(default)]
        weight: f64,
    }

    fn worker() -> Worker {
        Worker {
            url: "http://10.0.0.5:8000".into(),
            role: Role::Prefill,
            port: 8000,
            ready: true,
            kv_url: Some("tcp://10.0.0.5:9000".into()),
            model: None,
            tags: vec!["a".into(), "b c".into()],
            limits: BTreeMap::from([("max".into(), 4)]),
            weight: 0.5,
        }
    }

    #[test]
    fn struct_round_trips_through_a_databag() {
        let bag = to_databag(&worker()).unwrap();
        let text = |k: &str| bag.get(k).unwrap().as_str();
        assert_eq!(text("url"), "http://10.0.0.5:8000");
        assert_eq!(text("role"), "prefill");
        assert_eq!(text("port"), "8000");
        assert_eq!(text("ready"), "true");
        assert_eq!(text("tags"), "[\"a\",\"b c\"]");
        assert_eq!(text("limits"), "{\"max\":4}");
        // None is written as "", which relation-set takes as a deletion.
        assert_eq!(text("model"), "");
        let mut stored = bag.clone();
        stored.retain(|_, v| !v.is_empty());
        assert_eq!(from_databag::<Worker>(&stored).unwrap(), worker());
    }

    #[test]
    fn strings_that_look_like_json_stay_strings() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct S {
            a: String,
            b: String,
            n: Option<u32>,
        }
        let bag = databag([("a", "123"), ("b", "true"), ("extra", "ignored")]);
        assert_eq!(
            from_databag::<S>(&bag).unwrap(),
            S {
                a: "123".into(),
                b: "true".into(),
                n: None
            }
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct S {
            port: u16,
        }
        let err = from_databag::<S>(&databag([("port", "eighty")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"port\""), "{err}");
        let err = from_databag::<S>(&databag([("port", "70000")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"port\""), "{err}");
        let err = from_databag::<S>(&Databag::new()).unwrap_err().to_string();
        assert!(err.contains("missing field `port`"), "{err}");
        assert!(to_databag(&[1, 2]).is_err());
    }

    #[test]
    fn untyped_maps_read_json_where_it_parses() {
        let bag = databag([("n", "2"), ("s", "http://x"), ("o", "{\"a\":1}")]);
        let m: BTreeMap<String, Value> = from_databag(&bag).unwrap();
        assert_eq!(m["n"], serde_json::json!(2));
        assert_eq!(m["s"], serde_json::json!("http://x"));
        assert_eq!(m["o"], serde_json::json!({"a": 1}));
        let m: BTreeMap<String, String> = from_databag(&bag).unwrap();
        assert_eq!(m["o"], "{\"a\":1}");
    }
}
