//! Legacy ports the guest uses to stop: the i8042 reset line and the ACPI
//! hardware-reduced sleep/reset register.

use crate::acpi::{RESET_VALUE, SLEEP_POWEROFF};
use crate::layout::{ACPI_SLEEP_PORT, I8042_COMMAND_PORT};

/// What a guest asked for by writing to a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerRequest {
    Poweroff,
    Reset,
    /// A template guest is ready to be saved (honoured only when asked for).
    Snapshot,
}

const I8042_RESET_CMD: u8 = 0xfe;

/// Interprets a port write that may stop the machine.
pub fn power_request(port: u16, data: &[u8]) -> Option<PowerRequest> {
    match (port, data.first().copied()) {
        (ACPI_SLEEP_PORT, Some(v)) if v == SLEEP_POWEROFF => Some(PowerRequest::Poweroff),
        (ACPI_SLEEP_PORT, Some(RESET_VALUE)) => Some(PowerRequest::Reset),
        (I8042_COMMAND_PORT, Some(I8042_RESET_CMD)) => Some(PowerRequest::Reset),
        (proto::SNAPSHOT_PORT, Some(proto::SNAPSHOT_REQUEST)) => Some(PowerRequest::Snapshot),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poweroff_and_reset_are_recognised() {
        assert_eq!(power_request(ACPI_SLEEP_PORT, &[0x34]), Some(PowerRequest::Poweroff));
        assert_eq!(power_request(ACPI_SLEEP_PORT, &[1]), Some(PowerRequest::Reset));
        assert_eq!(power_request(I8042_COMMAND_PORT, &[0xfe]), Some(PowerRequest::Reset));
        assert_eq!(power_request(ACPI_SLEEP_PORT, &[]), None);
        assert_eq!(power_request(0x80, &[0x34]), None);
        assert_eq!(
            power_request(proto::SNAPSHOT_PORT, &[0x5a]),
            Some(PowerRequest::Snapshot)
        );
        assert_eq!(power_request(proto::SNAPSHOT_PORT, &[0]), None);
    }
}
