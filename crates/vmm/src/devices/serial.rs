//! The 8250 UART on COM1: the guest's console, captured to a log file.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};

use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The 8250's registers (vm-superio's `SerialState`, which has no serde).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SerialRegs {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// Bytes of recent console output kept for error messages.
const TAIL_BYTES: usize = 16 * 1024;

/// Where console output goes: a log file, optionally our stderr, and a tail
/// kept in memory to explain a crash.
pub struct ConsoleSink {
    pub log: Option<File>,
    pub echo: bool,
    pub tail: VecDeque<u8>,
}

impl ConsoleSink {
    pub fn new(log: Option<File>, echo: bool) -> Self {
        ConsoleSink {
            log,
            echo,
            tail: VecDeque::with_capacity(TAIL_BYTES),
        }
    }

    /// If the guest's kernel panicked: the console from the panic line on
    /// (at most 40 lines).
    pub fn panic_report(&self) -> Option<String> {
        let text: Vec<u8> = self.tail.iter().copied().collect();
        let text = String::from_utf8_lossy(&text).replace('\r', "");
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.iter().rposition(|l| l.contains("Kernel panic"))?;
        Some(lines[start..].iter().take(40).copied().collect::<Vec<_>>().join("\n"))
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(log) = self.log.as_mut() {
            log.write_all(buf)?;
        }
        for &b in buf {
            if self.tail.len() == TAIL_BYTES {
                self.tail.pop_front();
            }
            self.tail.push_back(b);
        }
        if self.echo {
            let _ = io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(log) = self.log.as_mut() {
            log.flush()?;
        }
        Ok(())
    }
}

pub type Console = Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>;

pub fn console(irq: EventFd, sink: ConsoleSink) -> Console {
    Serial::new(IrqTrigger(irq), sink)
}

/// The UART's registers, for a snapshot.
pub fn registers(console: &Console) -> SerialRegs {
    let s = console.state();
    SerialRegs {
        baud_divisor_low: s.baud_divisor_low,
        baud_divisor_high: s.baud_divisor_high,
        interrupt_enable: s.interrupt_enable,
        interrupt_identification: s.interrupt_identification,
        line_control: s.line_control,
        line_status: s.line_status,
        modem_control: s.modem_control,
        modem_status: s.modem_status,
        scratch: s.scratch,
        in_buffer: s.in_buffer,
    }
}

/// A console whose UART continues from a snapshot's registers.
pub fn restored_console(irq: EventFd, sink: ConsoleSink, regs: &SerialRegs) -> io::Result<Console> {
    let state = SerialState {
        baud_divisor_low: regs.baud_divisor_low,
        baud_divisor_high: regs.baud_divisor_high,
        interrupt_enable: regs.interrupt_enable,
        interrupt_identification: regs.interrupt_identification,
        line_control: regs.line_control,
        line_status: regs.line_status,
        modem_control: regs.modem_control,
        modem_status: regs.modem_status,
        scratch: regs.scratch,
        in_buffer: regs.in_buffer.clone(),
    };
    Serial::from_state(&state, IrqTrigger(irq), vm_superio::serial::NoEvents, sink)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("serial state: {e:?}")))
}

/// Gives `console` a saved UART's registers, keeping its interrupt and
/// output.
pub fn continue_from(console: &mut Console, regs: &SerialRegs) -> io::Result<()> {
    let irq = console.interrupt_evt().0.try_clone()?;
    let placeholder = Serial::new(IrqTrigger(irq.try_clone()?), ConsoleSink::new(None, false));
    let old = std::mem::replace(console, placeholder);
    *console = restored_console(irq, old.into_writer(), regs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_found_in_the_tail_and_reported_from_its_first_line() {
        let mut sink = ConsoleSink::new(None, false);
        assert_eq!(sink.panic_report(), None);
        sink.write_all(
            b"booting\r\n[ 1.0] Kernel panic - not syncing: Attempted to kill init!\r\n[ 1.1] Call Trace:\r\n",
        )
        .unwrap();
        let report = sink.panic_report().unwrap();
        assert!(report.starts_with("[ 1.0] Kernel panic"));
        assert!(report.ends_with("Call Trace:"));
        // The tail is bounded however much the guest prints.
        sink.write_all(&vec![b'x'; 3 * TAIL_BYTES]).unwrap();
        assert_eq!(sink.tail.len(), TAIL_BYTES);
    }
}
