//! Stable failure reasons: the contract scripts rely on. Each reason has a
//! name (carried on the wire as google.rpc.ErrorInfo.reason), a gRPC code,
//! an exit code for fleetkeyctl and a default hint. The table is documented
//! in `docs/errors.md`; names and exit codes never change meaning.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// ErrorInfo domain of every fleetkey failure.
pub const ERROR_DOMAIN: &str = "fleetkey.dev";

macro_rules! reasons {
    ($($variant:ident = $name:literal, $exit:literal, $code:ident, $hint:literal;)*) => {
        /// Why an operation failed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($variant,)*
        }

        impl Reason {
            /// Every reason, in table order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable name, e.g. `CODE_EXPIRED`.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }

            /// fleetkeyctl's exit status for this reason.
            pub fn exit_code(self) -> u8 {
                match self { $(Reason::$variant => $exit,)* }
            }

            /// The gRPC status code that carries it.
            pub fn grpc_code(self) -> Code {
                match self { $(Reason::$variant => Code::$code,)* }
            }

            /// What the person can do about it, when nothing more specific is known.
            pub fn default_hint(self) -> &'static str {
                match self { $(Reason::$variant => $hint,)* }
            }

            /// The reason with this stable name.
            pub fn from_name(name: &str) -> Option<Reason> {
                match name { $($name => Some(Reason::$variant),)* _ => None }
            }
        }
    };
}

reasons! {
    CodeMalformed = "CODE_MALFORMED", 10, InvalidArgument,
        "An activation code is 16 characters (0-9 and letters other than U) in four groups of four; check what was typed.";
    CodeMistyped = "CODE_MISTYPED", 11, InvalidArgument,
        "One character of the code is wrong; compare it with the code shown by the portal.";
    CodeUnknown = "CODE_UNKNOWN", 12, NotFound,
        "The portal does not know this code; check that it was issued by this portal, or ask for a new one.";
    CodeExpired = "CODE_EXPIRED", 13, FailedPrecondition,
        "The code has expired; ask the portal for a new one.";
    CodeAlreadyUsed = "CODE_ALREADY_USED", 14, FailedPrecondition,
        "Each code works once; ask the portal for a new one.";
    CodeWrongKind = "CODE_WRONG_KIND", 15, FailedPrecondition,
        "Device codes activate a device (fleetkeyctl activate); add-user codes add a user (fleetkeyctl user add).";
    PayloadInvalid = "PAYLOAD_INVALID", 16, InvalidArgument,
        "This is not a fleetkey enrollment code; scan or type the code shown by the portal.";
    PayloadVersion = "PAYLOAD_VERSION", 17, InvalidArgument,
        "The portal uses a newer enrollment format; update fleetkey.";
    AlreadyEnrolled = "ALREADY_ENROLLED", 20, AlreadyExists,
        "The user is already enrolled on this device; remove the user first to enroll again.";
    AlreadyActivated = "ALREADY_ACTIVATED", 21, AlreadyExists,
        "This device is already activated. To activate it again (e.g. now with a TPM, or with another portal): fleetkeyctl deactivate, then fleetkeyctl activate CODE.";
    DeviceNotActivated = "DEVICE_NOT_ACTIVATED", 22, FailedPrecondition,
        "Activate the device first: fleetkeyctl activate CODE.";
    DeviceUnknown = "DEVICE_UNKNOWN", 23, NotFound,
        "The portal does not know this device; it may have been removed there. Activate it again.";
    UserUnknown = "USER_UNKNOWN", 24, NotFound,
        "No such user on this device; fleetkeyctl user list shows who is enrolled.";
    UserNameInvalid = "USER_NAME_INVALID", 25, InvalidArgument,
        "User names are 1-64 letters, digits, single inner spaces and . - _ @ ' + (docs/user-names.md); pick another name.";
    DeviceHasUsers = "DEVICE_HAS_USERS", 26, FailedPrecondition,
        "Remove the users first (fleetkeyctl user remove NAME), or deactivate with --remove-users to remove and revoke them all.";
    PinPolicy = "PIN_POLICY", 30, InvalidArgument,
        "Choose a PIN that meets the policy shown by fleetkeyctl status.";
    PinWrong = "PIN_WRONG", 31, Unauthenticated,
        "Check the PIN and try again; the user is locked after too many wrong PINs.";
    PinLocked = "PIN_LOCKED", 32, PermissionDenied,
        "Too many wrong PINs: ask an administrator to remove the user and enroll them again.";
    PermissionDenied = "PERMISSION_DENIED", 40, PermissionDenied,
        "Run this as an administrator: root, or a member of admin_group when fleetkeyd.toml sets one.";
    SignatureInvalid = "SIGNATURE_INVALID", 41, Unauthenticated,
        "The request's signature or proof of possession did not verify.";
    PortalUnreachable = "PORTAL_UNREACHABLE", 50, Unavailable,
        "Check the network and the portal URL, then try again; the code is still valid.";
    PortalInsecure = "PORTAL_INSECURE", 55, FailedPrecondition,
        "Use the portal's https:// URL; plain http:// is allowed only to loopback and to hosts listed in the daemon's allow_plaintext_portals.";
    RateLimited = "RATE_LIMITED", 56, ResourceExhausted,
        "Too many requests in a short time; wait retry_after_seconds and try again.";
    Busy = "BUSY", 57, ResourceExhausted,
        "The daemon is busy with other requests; try again in a moment.";
    PortalError = "PORTAL_ERROR", 51, Unavailable,
        "The portal answered with an unexpected error; try again later or contact the portal's administrator.";
    BackendUnavailable = "BACKEND_UNAVAILABLE", 52, Unavailable,
        "fleetkeyctl status shows which key stores are available and why not.";
    BackendUnknown = "BACKEND_UNKNOWN", 53, InvalidArgument,
        "fleetkeyctl status lists the key stores this daemon has.";
    Unsupported = "UNSUPPORTED", 54, Unimplemented,
        "This key store cannot do that; fleetkeyctl status lists what each one can do.";
    DaemonUnreachable = "DAEMON_UNREACHABLE", 60, Unavailable,
        "Is fleetkeyd running? Check the socket path (--socket or FLEETKEY_SOCKET).";
    DaemonUntrusted = "DAEMON_UNTRUSTED", 61, PermissionDenied,
        "The socket is served by a process of another user, which could be an impostor collecting PINs; use the system daemon's socket, or name the uid you trust in FLEETKEY_TRUSTED_UIDS.";
    InvalidArgument = "INVALID_ARGUMENT", 64, InvalidArgument,
        "Check the command's arguments (--help).";
    StateError = "STATE_ERROR", 70, Internal,
        "The daemon's state store failed; see the daemon's log. Nothing was changed.";
    Internal = "INTERNAL", 71, Internal,
        "An unexpected failure; see the daemon's log.";
    TpmLockout = "TPM_LOCKOUT", 80, Unavailable,
        "The TPM refuses every PIN until its dictionary-attack counter decays; try again after retry_after_seconds, or have an administrator reset it (tpm2_dictionarylockout --clear-lockout).";
    TpmKeyRejected = "TPM_KEY_REJECTED", 81, FailedPrecondition,
        "This TPM cannot open the user's key (made by another TPM, or the TPM was cleared); remove the user and enroll them again.";
    CardNotPresent = "CARD_NOT_PRESENT", 90, FailedPrecondition,
        "Insert the user's smartcard (fleetkeyctl card list shows the readers and cards) and try again.";
    CardMismatch = "CARD_MISMATCH", 91, FailedPrecondition,
        "The card in the reader is not the one the user's key is on; insert the user's own card.";
    CardManagementKey = "CARD_MANAGEMENT_KEY", 92, FailedPrecondition,
        "The card refused the PIV management key; set backends.pcsc.management_key_file to this card's management key.";
    PukWrong = "PUK_WRONG", 93, Unauthenticated,
        "Check the PUK (the card's PIN unblocking key) and try again; when its tries run out the card must be reset.";
    CardUnsupported = "CARD_UNSUPPORTED", 94, FailedPrecondition,
        "This card cannot hold fleetkey keys (no PIV application, or no identity); use a PIV card or token.";
    CameraNotFound = "CAMERA_NOT_FOUND", 85, NotFound,
        "Connect a camera and check fleetkeyctl camera list, or enroll from a picture of the code (--qr-image FILE) or by typing the code.";
    CameraBusy = "CAMERA_BUSY", 86, Unavailable,
        "Another program is using the camera; close it (video calls, camera apps) and try again, or choose another camera.";
    CameraLost = "CAMERA_LOST", 87, Unavailable,
        "The camera stopped delivering frames (unplugged or failed); reconnect it and try again.";
    QrNotFound = "QR_NOT_FOUND", 88, NotFound,
        "Move the code closer or farther, light it evenly without glare, try another camera, or type the code printed under the QR code.";
    QrNotEnrollment = "QR_NOT_ENROLLMENT", 89, InvalidArgument,
        "This QR code is not a fleetkey enrollment code; show the code the portal gives for adding a user.";
    PinChangeRequired = "PIN_CHANGE_REQUIRED", 33, FailedPrecondition,
        "Change the PIN first: fleetkeyctl user pin change NAME.";
    TpmBudgetSpent = "TPM_BUDGET_SPENT", 82, Unavailable,
        "Wrong PINs on this device have used up the TPM's shared allowance for users who have already typed a wrong PIN; try again after retry_after_seconds. An administrator can raise the allowance: fleetkeyctl tpm provision.";
    TpmLockoutAuthWrong = "TPM_LOCKOUT_AUTH_WRONG", 83, PermissionDenied,
        "The TPM refused the lockout authorization: give the file that holds it with --lockout-auth-file (a wrong one blocks the lockout authorization for the TPM's lockoutRecovery time).";
    TpmLockoutAuthBlocked = "TPM_LOCKOUT_AUTH_BLOCKED", 84, Unavailable,
        "A wrong lockout authorization was given recently; the TPM accepts none until its lockoutRecovery time has passed (fleetkeyctl status shows it).";
    ChallengeExpired = "CHALLENGE_EXPIRED", 100, FailedPrecondition,
        "The login request has expired; start the login again at the portal.";
    ChallengeUnknown = "CHALLENGE_UNKNOWN", 101, NotFound,
        "No such login request on this device; fleetkeyctl approvals list shows the pending ones.";
    ChallengeAnswered = "CHALLENGE_ANSWERED", 102, FailedPrecondition,
        "This login request was already approved or denied; each is answered once.";
    NumberWrong = "NUMBER_WRONG", 103, PermissionDenied,
        "The number did not match the one on the login screen; the login was denied. Start the login again if it was yours.";
    PortalNotConnected = "PORTAL_NOT_CONNECTED", 104, Unavailable,
        "The device is not connected to the portal right now, so the answer cannot be delivered; fleetkeyctl status shows the connection, try again when it is connected.";
    AuditTampered = "AUDIT_TAMPERED", 105, DataLoss,
        "The audit log has been edited, cut or reordered at the line named; keep a copy for investigation.";
    IntegrityRefused = "INTEGRITY_REFUSED", 110, FailedPrecondition,
        "This device fails integrity checks the configuration requires; fix each one as its hint says (fleetkeyctl integrity), then try again.";
    // --- batch enrollment ---
    BatchPartial = "BATCH_PARTIAL", 120, FailedPrecondition,
        "Some lines of the batch failed (each is reported with its reason); fix them and run the same command again: users already enrolled are reported done, not enrolled twice.";
    BatchFailed = "BATCH_FAILED", 121, FailedPrecondition,
        "No line of the batch was enrolled; each line is reported with its reason. Fix the cause and run the same command again.";
    BatchInvalid = "BATCH_INVALID", 122, InvalidArgument,
        "The dry run found lines that would fail (each is reported with its reason); fix them before the real run.";
    // --- migration and reset ---
    ResetCodeMismatch = "RESET_CODE_MISMATCH", 123, FailedPrecondition,
        "This code does not reset this user's credential; ask the portal for a reset code for the user on this device: fleetkey-portal user reset-code NAME --device DEVICE_ID.";
    ResetPending = "RESET_PENDING", 124, Unavailable,
        "A reset of this user is waiting for the portal's answer; fleetkeyd sends it again every minute and at its next start. Check the connection to the portal (fleetkeyctl doctor).";
    EnrollPending = "ENROLL_PENDING", 125, Unavailable,
        "The portal's answer to this enrollment was lost; fleetkeyd keeps the key and sends the same request again every minute and at its next start. Run the same command again to finish it now; check the connection to the portal (fleetkeyctl doctor).";
    // --- system service ---
    DoctorProblems = "DOCTOR_PROBLEMS", 65, FailedPrecondition,
        "fleetkeyctl doctor found something broken; fix each failed check as its hint says and run it again.";
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure as fleetkey reports it: a reason, a one-line message saying
/// what failed and why, a hint saying what to do, and machine-readable
/// details (e.g. `tries_left`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    pub hint: String,
    pub metadata: BTreeMap<String, String>,
}

impl Failure {
    /// A failure with the reason's default hint.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            hint: reason.default_hint().to_string(),
            metadata: BTreeMap::new(),
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = hint.into();
        self
    }

    pub fn with_meta(mut self, key: &str, value: impl ToString) -> Self {
        self.metadata.insert(key.to_string(), value.to_string());
        self
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The gRPC status, with the reason in a google.rpc.ErrorInfo.
    pub fn to_status(&self) -> tonic::Status {
        let mut metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        metadata.insert("hint".into(), self.hint.clone());
        let details = ErrorDetails::with_error_info(self.reason.as_str(), ERROR_DOMAIN, metadata);
        tonic::Status::with_error_details(self.reason.grpc_code(), self.message.clone(), details)
    }

    /// Reads a status back. A status without fleetkey's ErrorInfo (from a
    /// transport or a foreign server) gets a reason from its gRPC code.
    pub fn from_status(status: &tonic::Status) -> Self {
        let details = status.get_error_details();
        if let Some(info) = details.error_info()
            && info.domain == ERROR_DOMAIN
            && let Some(reason) = Reason::from_name(&info.reason)
        {
            let mut metadata: BTreeMap<String, String> =
                info.metadata.clone().into_iter().collect();
            let hint = metadata
                .remove("hint")
                .unwrap_or_else(|| reason.default_hint().to_string());
            return Self {
                reason,
                message: status.message().to_string(),
                hint,
                metadata,
            };
        }
        let reason = match status.code() {
            Code::PermissionDenied => Reason::PermissionDenied,
            Code::InvalidArgument | Code::OutOfRange => Reason::InvalidArgument,
            Code::Unimplemented => Reason::Unsupported,
            _ => Reason::Internal,
        };
        Self::new(
            reason,
            format!("{} ({:?})", status.message(), status.code()),
        )
    }
}

/// Whether a status carries fleetkey's own ErrorInfo (as opposed to a
/// transport failure or a foreign server's answer).
pub fn is_fleetkey_status(status: &tonic::Status) -> bool {
    status.get_error_details().error_info().is_some_and(|info| {
        info.domain == ERROR_DOMAIN && Reason::from_name(&info.reason).is_some()
    })
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Failure {}

impl From<Failure> for tonic::Status {
    fn from(failure: Failure) -> Self {
        failure.to_status()
    }
}

impl From<crate::code::CodeError> for Failure {
    fn from(error: crate::code::CodeError) -> Self {
        let reason = match error {
            crate::code::CodeError::CheckMismatch => Reason::CodeMistyped,
            _ => Reason::CodeMalformed,
        };
        Failure::new(reason, error.to_string())
    }
}

impl From<crate::payload::PayloadError> for Failure {
    fn from(error: crate::payload::PayloadError) -> Self {
        use crate::payload::PayloadError;
        match error {
            PayloadError::Code(code) => code.into(),
            PayloadError::UnsupportedVersion(_) => {
                Failure::new(Reason::PayloadVersion, error.to_string())
            }
            other => Failure::new(Reason::PayloadInvalid, other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_exit_codes_are_unique() {
        let mut names = std::collections::HashSet::new();
        let mut exits = std::collections::HashSet::new();
        for reason in Reason::ALL {
            assert!(names.insert(reason.as_str()), "{reason} twice");
            assert!(exits.insert(reason.exit_code()), "{reason} exit code twice");
            assert!(reason.exit_code() > 2, "0-2 are success, failure, usage");
            assert_eq!(Reason::from_name(reason.as_str()), Some(*reason));
        }
    }

    #[test]
    fn status_round_trip() {
        let failure = Failure::new(Reason::PinWrong, "wrong PIN for alice")
            .with_meta("tries_left", 3)
            .with_hint("try again");
        let status = failure.to_status();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(Failure::from_status(&status), failure);
    }

    #[test]
    fn foreign_status_gets_a_reason() {
        let status = tonic::Status::permission_denied("no");
        assert_eq!(
            Failure::from_status(&status).reason,
            Reason::PermissionDenied
        );
        let status = tonic::Status::unknown("boom");
        assert_eq!(Failure::from_status(&status).reason, Reason::Internal);
    }

    #[test]
    fn errors_doc_lists_every_reason_with_its_exit_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/errors.md");
        let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let rows: Vec<Vec<&str>> = doc
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with('|'))
            .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        let name_of = |cell: &str| cell.trim_matches('`').to_string();
        // Rows of the reasons table: an upper-case name, then an exit code.
        let reason_rows: Vec<&Vec<&str>> = rows
            .iter()
            .filter(|cells| {
                let name = name_of(cells[0]);
                cells.len() >= 2
                    && !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    && cells[1].parse::<u8>().is_ok()
            })
            .collect();
        for reason in Reason::ALL {
            let matching: Vec<_> = reason_rows
                .iter()
                .filter(|cells| name_of(cells[0]) == reason.as_str())
                .collect();
            assert_eq!(
                matching.len(),
                1,
                "docs/errors.md needs exactly one table row for {reason}"
            );
            let cells = matching[0];
            assert_eq!(
                cells[1],
                reason.exit_code().to_string(),
                "docs/errors.md gives {reason} the wrong exit code"
            );
            let mut grpc_name = String::new();
            for (i, c) in format!("{:?}", reason.grpc_code()).chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    grpc_name.push('_');
                }
                grpc_name.push(c.to_ascii_uppercase());
            }
            let grpc = format!("`{grpc_name}` ({})", i32::from(reason.grpc_code()));
            assert!(
                cells.contains(&grpc.as_str()),
                "docs/errors.md should give {reason} the gRPC code {grpc}"
            );
            assert!(
                cells.contains(&reason.default_hint()),
                "docs/errors.md should show {reason}'s default hint"
            );
        }
        for cells in reason_rows {
            assert!(
                Reason::from_name(&name_of(cells[0])).is_some(),
                "docs/errors.md lists {}, which is not a reason",
                cells[0]
            );
        }
    }
}
