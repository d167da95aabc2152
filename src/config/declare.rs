//! [`settings!`](settings): each setting declared once, and everything
//! else made from that declaration.
//!
//! A table of settings is declared as rows: key, field, type, default, doc
//! and, for some, a flag with its variable. From them the macro makes the
//! table's struct of effective values, the struct the config file is read
//! into (one `Option` per key, unknown keys refused), the resolution of
//! each value (flag or variable, else file, else default) with where it
//! came from, and [`Setting`] rows that the command line (flags and `--help`)
//! and `warren config` walk. So adding a setting is one row here and the
//! code that uses it.
//!
//! A type's own [`Value`](super::value::Value) says how the file writes it
//! and how `warren config` shows it; `show(..)` on a row shows it otherwise.

use super::error::Error;
use super::origin::{Origin, Overrides};
use super::value::FromArg;

/// One setting of a table, for the command line and `warren config`.
pub(crate) struct Setting<T> {
    /// Its key in the config file, and its name in `warren config`.
    pub key: &'static str,
    /// Its doc comment; for a setting with a flag, the flag's `--help`.
    pub doc: &'static str,
    /// Whether a flag (and its variable) gives it too.
    pub flag: Option<Flag>,
    /// Its value in `T`, the table's struct, as `warren config` shows it.
    pub show: fn(&T) -> String,
}

impl<T> Setting<T> {
    /// The setting as a global option gives it, if one does.
    pub(crate) fn flagged(&self) -> Option<Flagged> {
        Some(Flagged {
            key: self.key,
            help: self.doc.trim(),
            flag: self.flag?,
        })
    }
}

/// A global option that gives a setting, and the variable clap reads when
/// the option is not there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flag {
    /// `--long`.
    pub long: &'static str,
    /// Its variable, from [`crate::config::env`].
    pub env: &'static str,
    /// The placeholder in `--help`.
    pub value_name: &'static str,
    /// Listed by `--help` only, not by `-h`.
    pub long_help_only: bool,
    /// What clap checks before the setting's type parses the value.
    pub value_parser: fn() -> clap::builder::ValueParser,
}

/// A setting that a global option gives, whatever its table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flagged {
    /// The setting's key, and the option's id.
    pub key: &'static str,
    /// `--help` text.
    pub help: &'static str,
    pub flag: Flag,
}

/// The value a flag or a variable gives for `key`, parsed, with where it
/// came from; an error naming both if it does not parse.
pub(crate) fn given<T: FromArg>(
    overrides: &Overrides,
    table: &str,
    key: &'static str,
) -> Result<Option<(T, Origin)>, Error> {
    let Some(given) = overrides.settings.get(key) else {
        return Ok(None);
    };
    match T::from_arg(&given.value) {
        Ok(value) => Ok(Some((value, given.origin))),
        Err(reason) => Err(Error::Value {
            setting: match table {
                "" => key.to_owned(),
                table => format!("[{table}] {key}"),
            },
            value: given.value.to_string_lossy().into_owned(),
            origin: given.origin,
            reason,
        }),
    }
}

/// Declares a table of settings (see the module docs). Its header names
/// the table in the file (`""` for the top), the struct of effective
/// values, the struct the file is read into and the tables nested in it.
/// Each row is
///
/// ```text
/// /// Doc (for a row with a flag, its --help).
/// "key" field: Type = default,
///     flag("long", "VALUE NAME", env::VARIABLE[, hidden]),  // optional
///     show(|value: &Type| -> String);                        // optional
/// ```
///
/// The default is an expression evaluated only when neither a flag nor
/// the file gives the value; it may use `?` with an [`Error`].
macro_rules! settings {
    (
        $(#[doc = $doc:literal])*
        $table:literal $name:ident, file $file:ident $(, table $sub:ident: $sub_file:ident)* {
            $(
                $(#[doc = $field_doc:literal])*
                $key:literal $field:ident: $ty:ty = $default:expr
                $(, flag($long:literal, $value_name:literal, $env:path $(, $hidden:ident)?))?
                $(, show($show:expr))?
                ;
            )+
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub(crate) struct $name {
            $(
                $(#[doc = $field_doc])*
                pub(crate) $field: $ty,
            )+
        }

        #[doc = concat!("[`", stringify!($name), "`] as the config file writes it: `None` for a key that is not there.")]
        #[derive(Debug, Default, PartialEq, Eq, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $file {
            $(
                #[serde(
                    rename = $key,
                    default,
                    deserialize_with = "crate::config::value::from_file"
                )]
                pub(crate) $field: Option<$ty>,
            )+
            $(
                #[serde(default)]
                pub(crate) $sub: $sub_file,
            )*
        }

        impl $name {
            /// Every setting of the table, in the order `warren config`
            /// shows them.
            pub(crate) const SETTINGS: &'static [$crate::config::declare::Setting<Self>] = &[$(
                $crate::config::declare::Setting {
                    key: $key,
                    doc: concat!($($field_doc),*),
                    flag: $crate::config::declare::optional!($(
                        $crate::config::declare::Flag {
                            long: $long,
                            env: $env,
                            value_name: $value_name,
                            long_help_only: $crate::config::declare::optional!(@is $($hidden)?),
                            value_parser: <$ty as $crate::config::value::FromArg>::value_parser,
                        }
                    )?),
                    show: |table: &Self| {
                        $crate::config::declare::optional!(@show &table.$field $(, $show)?)
                    },
                },
            )+];

            /// Each value from a flag or its variable, else from `file`
            /// (taken out of it), else its default; where each came from
            /// goes into `origins`.
            pub(crate) fn resolve(
                file: &mut $file,
                overrides: &$crate::config::origin::Overrides,
                origins: &mut ::std::collections::HashMap<&'static str, $crate::config::origin::Origin>,
            ) -> Result<Self, $crate::config::error::Error> {
                use $crate::config::origin::Origin;
                // A table without flags does not read them.
                let _ = overrides;
                Ok(Self {$(
                    $field: {
                        let given: Option<($ty, Origin)> = $crate::config::declare::optional!(
                            @given overrides, $table, $key, $ty $(, $long)?
                        );
                        let (value, origin) = match (given, file.$field.take()) {
                            (Some(given), _) => given,
                            (None, Some(value)) => (value, Origin::File),
                            (None, None) => ($default, Origin::Default),
                        };
                        origins.insert($key, origin);
                        value
                    },
                )+})
            }
        }
    };
}

/// The parts of a row that it may leave out.
macro_rules! optional {
    (@is) => {
        false
    };
    (@is hidden) => {
        true
    };
    (@show $value:expr) => {
        $crate::config::value::Value::show($value)
    };
    (@show $value:expr, $show:expr) => {
        ($show)($value)
    };
    (@given $overrides:ident, $table:literal, $key:literal, $ty:ty) => {
        None
    };
    (@given $overrides:ident, $table:literal, $key:literal, $ty:ty, $long:literal) => {
        $crate::config::declare::given::<$ty>($overrides, $table, $key)?
    };
    () => {
        None
    };
    ($value:expr) => {
        Some($value)
    };
}

pub(crate) use {optional, settings};
