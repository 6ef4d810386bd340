//! Command ids on the command line: a full id, or the first characters of
//! one, as the demo, `list` and `show` print them (`5b0c12ab`).

use std::fmt;

use command_coordinator::CommandId;
use command_coordinator::tokio_postgres::types::ToSql;

use crate::db::{CliError, Db, Result};

/// The shortest prefix accepted: the 8 characters the demo and the tables
/// print. Shorter ones would match several commands in any real table (8 hex
/// characters are 32 bits: one clash in about 4 billion per pair of ids).
pub const MIN_PREFIX: usize = 8;

/// How many matches of an ambiguous prefix the error names.
const SHOWN_MATCHES: i64 = 3;

/// An id as typed: whole, or a prefix still to look up.
#[derive(Debug, Clone)]
pub enum IdArg {
    Full(CommandId),
    /// Lower-case hex digits and the hyphens of the canonical form.
    Prefix(String),
}

impl IdArg {
    /// The clap parser: a full id, or ≥ [`MIN_PREFIX`] hex characters of one.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let s = text.trim().to_ascii_lowercase();
        if let Ok(id) = s.parse::<CommandId>() {
            return Ok(Self::Full(id));
        }
        // The canonical form: 8-4-4-4-12 hex digits.
        const SHAPE: &str = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
        let fits = s.len() <= SHAPE.len()
            && s.chars().zip(SHAPE.chars()).all(|(c, shape)| match shape {
                '-' => c == '-',
                _ => c.is_ascii_hexdigit(),
            });
        if !fits {
            // clap puts the value in front: "invalid value 'x' for '<ID>'".
            return Err(format!(
                "not a command id (a UUID, or its first {MIN_PREFIX} or more characters)"
            ));
        }
        let digits = s.chars().filter(char::is_ascii_hexdigit).count();
        if digits < MIN_PREFIX {
            return Err(format!(
                "too short: give at least the first {MIN_PREFIX} characters of the id"
            ));
        }
        Ok(Self::Prefix(s))
    }

    /// The one command this stands for. A full id is taken as it is (whether
    /// it exists is the subcommand's business); a prefix must match exactly
    /// one command.
    pub async fn resolve(&self, db: &Db) -> Result<CommandId> {
        let prefix = match self {
            Self::Full(id) => return Ok(*id),
            Self::Prefix(prefix) => prefix,
        };
        // The range of ids starting with the prefix (uuids order as their
        // hex text does) lets the primary key find them without a scan; the
        // LIKE states the match itself. The prefix holds only hex digits and
        // hyphens, none of which LIKE treats specially.
        let bound = |digit| {
            complete(prefix, digit)
                .parse::<CommandId>()
                .map(|id| *id.as_uuid())
                .map_err(|e| CliError::new(format!("{prefix}: {e}")))
        };
        let (low, high) = (bound('0')?, bound('f')?);
        let sql = format!(
            "SELECT command_id FROM {t} \
             WHERE command_id BETWEEN $2::uuid AND $3::uuid \
               AND command_id::text LIKE $1::text || '%' \
             ORDER BY command_id LIMIT $4",
            t = db.table()
        );
        let params: [&(dyn ToSql + Sync); 4] = [prefix, &low, &high, &SHOWN_MATCHES];
        let rows = db.query(&sql, &params).await?;
        match rows.as_slice() {
            [] => Err(CliError::new(format!("no command id starts with {prefix}"))),
            [one] => Ok(CommandId::from_uuid(one.get(0))),
            many => {
                let ids: Vec<String> = many
                    .iter()
                    .map(|r| CommandId::from_uuid(r.get(0)).to_string())
                    .collect();
                let more = if many.len() as i64 == SHOWN_MATCHES {
                    ", …"
                } else {
                    ""
                };
                Err(CliError::usage(format!(
                    "{prefix} is ambiguous: it starts {}{more}; give more characters",
                    ids.join(", ")
                )))
            }
        }
    }
}

impl fmt::Display for IdArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(id) => write!(f, "{id}"),
            Self::Prefix(prefix) => f.write_str(prefix),
        }
    }
}

/// `prefix` filled up to a whole canonical id with `digit`.
fn complete(prefix: &str, digit: char) -> String {
    const SHAPE: &str = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
    let mut id = prefix.to_owned();
    for shape in SHAPE.chars().skip(prefix.len()) {
        id.push(if shape == '-' { '-' } else { digit });
    }
    id
}

/// The short form the tables print: the first [`MIN_PREFIX`] characters.
pub fn short(id: CommandId) -> String {
    id.to_string()[..MIN_PREFIX].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_ids_and_prefixes() {
        let id = CommandId::new();
        assert!(matches!(IdArg::parse(&id.to_string()), Ok(IdArg::Full(i)) if i == id));
        let upper = id.to_string().to_uppercase();
        assert!(matches!(IdArg::parse(&upper), Ok(IdArg::Full(i)) if i == id));
        for prefix in [
            "5b0c12ab",
            "5B0C12AB",
            "5b0c12ab-",
            "5b0c12ab-12",
            "5b0c12ab-1234-5",
        ] {
            let parsed = IdArg::parse(prefix).unwrap();
            assert!(matches!(&parsed, IdArg::Prefix(p) if *p == prefix.to_lowercase()));
        }
        for bad in [
            "5b0c12a",
            "1234",
            "",
            "5b0c12ag",
            "5b0c12ab1",
            "5b0c-12ab",
            "not-a-uuid",
        ] {
            assert!(IdArg::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            IdArg::parse("5b0c")
                .unwrap_err()
                .contains("at least the first 8")
        );
    }

    #[test]
    fn a_prefix_spans_a_range_of_ids() {
        assert_eq!(
            complete("5b0c12ab", '0'),
            "5b0c12ab-0000-0000-0000-000000000000"
        );
        assert_eq!(
            complete("5b0c12ab-12", 'f'),
            "5b0c12ab-12ff-ffff-ffff-ffffffffffff"
        );
        assert_eq!(
            complete("5b0c12ab-", 'f'),
            "5b0c12ab-ffff-ffff-ffff-ffffffffffff"
        );
    }
}
