//! What `user add` can check before anyone types a PIN: the device is
//! activated, the key store can be used, the code is an add-user code for
//! this device's portal and its user is not enrolled yet. fleetkeyctl asks
//! (`CheckAddUser`) before it prompts, so a person is not asked for a PIN
//! twice only to learn the device is not activated.

use fleetkey_proto::portal::CodeKind;
use fleetkey_proto::{EnrollmentInput, Failure, Reason, daemon};

use super::enrollment::{already_enrolled, portal_user_name, same_url};
use super::{Engine, wrong_kind};

impl Engine {
    /// Checks an enrollment up to the PIN. With an empty `input` (a QR
    /// code not read yet) only the device and the key store are checked.
    pub async fn precheck_add_user(
        &self,
        input: &str,
        backend: &str,
    ) -> Result<daemon::CheckAddUserResponse, Failure> {
        let parsed = if input.is_empty() {
            None
        } else {
            Some(EnrollmentInput::parse(input)?)
        };
        let device = self.require_device()?;
        let backend_name = if backend.is_empty() {
            self.default_backend.as_str()
        } else {
            backend
        };
        self.store(backend_name)?;
        let Some(input) = parsed else {
            return Ok(daemon::CheckAddUserResponse::default());
        };
        if let Some(url) = input.portal_url()
            && !same_url(url, &device.portal_url)
        {
            return Err(Failure::new(
                Reason::InvalidArgument,
                format!(
                    "this code is for the portal {url}, but the device is activated with {}",
                    device.portal_url
                ),
            )
            .with_hint("Ask the device's own portal for an add-user code."));
        }
        // A pending enrollment made with this code (its answer was lost):
        // AddUser with the code finishes it.
        if let Some(user) = self.pending_user_with_code(input.code().compact())? {
            return Ok(daemon::CheckAddUserResponse { user: user.name });
        }
        let mut portal = self.portal.connect(&device.portal_url).await?;
        let checked = portal.check_code(input.code().compact()).await?;
        if checked.kind() != CodeKind::User {
            return Err(wrong_kind(
                "a device activation code",
                "add a user",
                "fleetkeyctl activate",
            ));
        }
        let name = portal_user_name(&checked.user)?;
        if self.user_record(&name)?.is_some() {
            return Err(already_enrolled(&name));
        }
        Ok(daemon::CheckAddUserResponse { user: name })
    }
}
