//! Failures as D-Bus errors: a failure with reason `R` is the error
//! `org.fleetkey.Error.R` (R as in docs/errors.md, e.g.
//! `org.fleetkey.Error.PERMISSION_DENIED`), its message the failure's
//! message, then its hint on a second line when it has one.

use fleetkey_proto::{Failure, Reason};
use zbus::message::Header;
use zbus::names::{ErrorName, OwnedErrorName};
use zbus::{DBusError, Message};

/// The prefix of every fleetkey error name.
pub const PREFIX: &str = "org.fleetkey.Error.";

/// A failure on its way back to a D-Bus caller.
#[derive(Debug)]
pub struct BusFailure {
    name: OwnedErrorName,
    description: String,
}

/// The D-Bus error name of a reason.
pub fn error_name(reason: Reason) -> OwnedErrorName {
    OwnedErrorName::try_from(format!("{PREFIX}{}", reason.as_str())).unwrap_or_else(|_| {
        // Reason names are upper-case words and underscores, always valid.
        ErrorName::from_static_str_unchecked("org.fleetkey.Error.INTERNAL").into()
    })
}

impl From<Failure> for BusFailure {
    fn from(failure: Failure) -> Self {
        let description = if failure.hint.is_empty() {
            failure.message
        } else {
            format!("{}\n{}", failure.message, failure.hint)
        };
        Self {
            name: error_name(failure.reason),
            description,
        }
    }
}

impl DBusError for BusFailure {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        Message::error(call, ErrorName::from(&self.name))?.build(&(self.description.as_str(),))
    }

    fn name(&self) -> ErrorName<'_> {
        ErrorName::from(&self.name)
    }

    fn description(&self) -> Option<&str> {
        Some(&self.description)
    }
}

/// A failure as a property read's error (zbus wants `fdo::Error` there):
/// the reason's name leads the message.
pub fn property_error(failure: Failure) -> zbus::fdo::Error {
    zbus::fdo::Error::Failed(format!("{}: {}", failure.reason.as_str(), failure.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_valid_error_name() {
        for reason in Reason::ALL {
            let name = error_name(*reason);
            assert_eq!(name.as_str(), format!("{PREFIX}{}", reason.as_str()));
        }
    }

    #[test]
    fn the_hint_follows_the_message() {
        let failure = BusFailure::from(
            Failure::new(Reason::UserUnknown, "no user named 'x'").with_hint("Check the name."),
        );
        assert_eq!(
            failure.description(),
            Some("no user named 'x'\nCheck the name.")
        );
        assert_eq!(failure.name().as_str(), "org.fleetkey.Error.USER_UNKNOWN");
    }
}
