//! TPM2_DictionaryAttackParameters (the TPM's `maxTries`, `recoveryTime`
//! and `lockoutRecovery`) and TPM2_DictionaryAttackLockReset, authorized by
//! the lockout hierarchy.
//!
//! tss-esapi (7.x) wraps neither command, so they are called through the
//! ESAPI's C functions, on a connection of its own: the store's context is
//! closed first (a simulator serves one client at a time) and opened again
//! after. The lockout authorization travels in an HMAC session, never in
//! clear on the bus.

use std::ffi::CString;
use std::ptr;

use tss_esapi::tss2_esys::{
    ESYS_CONTEXT, ESYS_TR, ESYS_TR_NONE, ESYS_TR_RH_LOCKOUT, Esys_DictionaryAttackLockReset,
    Esys_DictionaryAttackParameters, Esys_Finalize, Esys_FlushContext, Esys_Initialize,
    Esys_StartAuthSession, Esys_TR_SetAuth, TPM2B_AUTH, TPMT_SYM_DEF, TSS2_RC, TSS2_TCTI_CONTEXT,
    Tss2_TctiLdr_Finalize, Tss2_TctiLdr_Initialize,
};
use zeroize::Zeroize;

use crate::error::TpmError;

/// TPM2_SE_HMAC.
const SE_HMAC: u8 = 0x00;
/// TPM2_ALG_NULL, TPM2_ALG_SHA256.
const ALG_NULL: u16 = 0x0010;
const ALG_SHA256: u16 = 0x000b;
/// TPM_RC_AUTH_FAIL / TPM_RC_BAD_AUTH (format one, any session): the low
/// bits without the session number.
const RC_AUTH_FAIL: u32 = 0x08e;
const RC_BAD_AUTH: u32 = 0x0a2;
/// TPM_RC_LOCKOUT: the lockout hierarchy itself is locked after a wrong
/// lockout authorization, for `lockoutRecovery` seconds.
const RC_LOCKOUT: u32 = 0x921;
/// Most bytes an authorization value may have (sizeof(TPMU_HA)).
pub const MAX_LOCKOUT_AUTH: usize = 64;

/// The new parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaParameters {
    pub max_tries: u32,
    pub recovery_time: u32,
    pub lockout_recovery: u32,
}

/// Frees the ESAPI and TCTI contexts however the function returns.
struct Raw {
    tcti: *mut TSS2_TCTI_CONTEXT,
    esys: *mut ESYS_CONTEXT,
    session: ESYS_TR,
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: the pointers were set by the TSS's own initializers (or
        // are null) and are finalized once, here.
        unsafe {
            if !self.esys.is_null() {
                if self.session != ESYS_TR_NONE {
                    let _ = Esys_FlushContext(self.esys, self.session);
                }
                Esys_Finalize(&mut self.esys);
            }
            if !self.tcti.is_null() {
                Tss2_TctiLdr_Finalize(&mut self.tcti);
            }
        }
    }
}

fn check(step: &'static str, rc: TSS2_RC) -> Result<(), TpmError> {
    if rc == 0 {
        return Ok(());
    }
    // A TPM answer (layer 0) to the lockout authorization.
    if rc >> 16 == 0 {
        if rc & 0x80 != 0 && matches!(rc & 0xbf, RC_AUTH_FAIL | RC_BAD_AUTH) {
            return Err(TpmError::LockoutAuthWrong);
        }
        if rc == RC_LOCKOUT {
            return Err(TpmError::LockoutAuthBlocked);
        }
    }
    Err(TpmError::DaParameters {
        step,
        code: format!("{rc:#x}"),
    })
}

/// Sets the TPM's dictionary-attack parameters through `tcti`, with
/// `lockout_auth` (empty: the TPM has none).
pub fn set_da_parameters(
    tcti: &str,
    parameters: DaParameters,
    lockout_auth: &[u8],
) -> Result<(), TpmError> {
    with_lockout_auth(tcti, lockout_auth, |esys, session| {
        check(
            "TPM2_DictionaryAttackParameters",
            // SAFETY: `esys` and `session` are live handles made by
            // `with_lockout_auth` for this call.
            unsafe {
                Esys_DictionaryAttackParameters(
                    esys,
                    ESYS_TR_RH_LOCKOUT,
                    session,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    parameters.max_tries,
                    parameters.recovery_time,
                    parameters.lockout_recovery,
                )
            },
        )
    })
}

/// TPM2_DictionaryAttackLockReset through `tcti`, with `lockout_auth`
/// (empty: the TPM has none): the wrong-PIN counter goes back to 0.
pub fn reset_da_counter(tcti: &str, lockout_auth: &[u8]) -> Result<(), TpmError> {
    with_lockout_auth(tcti, lockout_auth, |esys, session| {
        check(
            "TPM2_DictionaryAttackLockReset",
            // SAFETY: as above.
            unsafe {
                Esys_DictionaryAttackLockReset(
                    esys,
                    ESYS_TR_RH_LOCKOUT,
                    session,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                )
            },
        )
    })
}

/// Runs one lockout-hierarchy command on a connection of its own, with
/// `lockout_auth` in an HMAC session.
fn with_lockout_auth(
    tcti: &str,
    lockout_auth: &[u8],
    command: impl FnOnce(*mut ESYS_CONTEXT, ESYS_TR) -> Result<(), TpmError>,
) -> Result<(), TpmError> {
    if lockout_auth.len() > MAX_LOCKOUT_AUTH {
        return Err(TpmError::LockoutAuthTooLong(lockout_auth.len()));
    }
    let conf = CString::new(tcti).map_err(|_| TpmError::DaParameters {
        step: "TCTI name",
        code: "contains a NUL byte".into(),
    })?;
    let mut raw = Raw {
        tcti: ptr::null_mut(),
        esys: ptr::null_mut(),
        session: ESYS_TR_NONE,
    };
    let mut auth = TPM2B_AUTH {
        size: 0,
        buffer: [0; 64],
    };
    auth.buffer[..lockout_auth.len()].copy_from_slice(lockout_auth);
    auth.size = lockout_auth.len() as u16;
    let symmetric = TPMT_SYM_DEF {
        algorithm: ALG_NULL,
        // SAFETY: plain-data unions; with algorithm NULL they are unused.
        keyBits: unsafe { std::mem::zeroed() },
        mode: unsafe { std::mem::zeroed() },
    };
    // SAFETY: every pointer handed to the TSS is valid for the call (locals
    // or contexts the TSS made); `raw` finalizes them.
    let opened = unsafe {
        (|| {
            check(
                "opening the TCTI",
                Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut raw.tcti),
            )?;
            check(
                "opening the ESAPI",
                Esys_Initialize(&mut raw.esys, raw.tcti, ptr::null_mut()),
            )?;
            check(
                "setting the lockout authorization",
                Esys_TR_SetAuth(raw.esys, ESYS_TR_RH_LOCKOUT, &auth),
            )?;
            check(
                "starting an HMAC session",
                Esys_StartAuthSession(
                    raw.esys,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    ESYS_TR_NONE,
                    ptr::null(),
                    SE_HMAC,
                    &symmetric,
                    ALG_SHA256,
                    &mut raw.session,
                ),
            )
        })()
    };
    let result = opened.and_then(|()| command(raw.esys, raw.session));
    auth.buffer.zeroize();
    drop(raw);
    result
}
