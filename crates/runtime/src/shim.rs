//! Temporary: the Sandbox controls that the VMM handle brings (merged from
//! the vmagent branch).

use crate::{RuntimeError, Sandbox};

impl Sandbox {
    /// Stops the VM's vCPUs.
    pub fn pause(&self) -> Result<(), RuntimeError> {
        Err(RuntimeError::Start("pause is not supported yet".into()))
    }
    /// Runs them again.
    pub fn resume(&self) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// The container's processes.
    #[allow(clippy::type_complexity)]
    pub fn top(&self) -> Result<(Vec<String>, Vec<Vec<String>>), RuntimeError> {
        Err(RuntimeError::Start("top is not supported yet".into()))
    }
    /// The guest's view of its resources.
    pub fn stats(&self) -> Result<husk_protocol::GuestStats, RuntimeError> {
        Err(RuntimeError::Start("stats is not supported yet".into()))
    }
    /// Stops the VM now.
    pub fn stop_vm(&self) {}
}
