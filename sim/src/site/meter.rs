//! The site's grid meter as a Modbus TCP server speaking the Eastron SDM630 register layout, so
//! that a load manager under test reads it as it would a real meter.
//!
//! Every request computes the reading live from the site (base load plus the chargers' draw).
//! Input registers (FC4) and holding registers (FC3) serve the same image; any unit id is
//! answered. The server can be told to stop at a given time, dropping the listener and every
//! connection, to simulate a lost meter.

use std::future::{Future, Ready, ready};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use super::limit::VOLTS;
use super::state::{Reading, Site};

/// Registers in the served image (0x0000..0x004F); reads beyond it are IllegalDataAddress.
pub const IMAGE_LEN: usize = 0x50;

pub const VOLTAGE_L1: usize = 0x0000;
pub const CURRENT_L1: usize = 0x0006;
pub const POWER_L1: usize = 0x000C;
pub const TOTAL_POWER: usize = 0x0034;
pub const FREQUENCY: usize = 0x0046;
pub const IMPORT_KWH: usize = 0x0048;

/// The SDM630 register image of `r`: float32 values, high word first (big-endian words).
pub fn registers(r: &Reading) -> Vec<u16> {
    let mut regs = vec![0u16; IMAGE_LEN];
    let mut put = |addr: usize, value: f64| {
        let bits = (value as f32).to_bits();
        regs[addr] = (bits >> 16) as u16;
        regs[addr + 1] = bits as u16;
    };
    for (phase, current) in r.currents.iter().enumerate() {
        put(VOLTAGE_L1 + 2 * phase, VOLTS);
        put(CURRENT_L1 + 2 * phase, *current);
        put(POWER_L1 + 2 * phase, VOLTS * current);
    }
    put(TOTAL_POWER, VOLTS * r.currents.iter().sum::<f64>());
    put(FREQUENCY, 50.0);
    put(IMPORT_KWH, r.energy_kwh);
    regs
}

/// Registers `addr..addr+count` of the image, or the exception a real meter would answer.
fn window(regs: &[u16], addr: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
    if count == 0 || count > 125 {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let start = usize::from(addr);
    regs.get(start..start + usize::from(count))
        .map(<[u16]>::to_vec)
        .ok_or(ExceptionCode::IllegalDataAddress)
}

struct MeterService {
    site: Arc<Site>,
}

impl tokio_modbus::server::Service for MeterService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let read = |addr, count| window(&registers(&self.site.meter_reading()), addr, count);
        ready(match req.request {
            Request::ReadInputRegisters(addr, count) => {
                read(addr, count).map(Response::ReadInputRegisters)
            }
            Request::ReadHoldingRegisters(addr, count) => {
                read(addr, count).map(Response::ReadHoldingRegisters)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// Binds the meter's listening socket.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the meter on {addr}"))
}

/// Serves the meter until `stop` completes; then the listener and all connections close.
pub async fn serve(
    listener: TcpListener,
    site: Arc<Site>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let on_connected = |stream, peer| {
        let site = Arc::clone(&site);
        async move {
            accept_tcp_connection(stream, peer, |_| {
                Ok(Some(MeterService {
                    site: Arc::clone(&site),
                }))
            })
        }
    };
    let on_error = |e| tracing::debug!("meter connection ended: {e}");
    if let Err(e) = Server::new(listener)
        .serve_until(&on_connected, on_error, stop)
        .await
    {
        tracing::error!("meter server failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(regs: &[u16], addr: usize) -> f32 {
        f32::from_bits((u32::from(regs[addr]) << 16) | u32::from(regs[addr + 1]))
    }

    #[test]
    fn sdm630_layout_high_word_first() {
        let r = Reading {
            t: 1.0,
            base_a: 10.0,
            currents: [10.0, 12.5, 16.0],
            energy_kwh: 1.25,
        };
        let regs = registers(&r);
        assert_eq!(regs.len(), IMAGE_LEN);
        // 230.0f32 = 0x4366_0000: the high word comes first.
        assert_eq!(&regs[0..2], &[0x4366, 0x0000]);
        for addr in [0x0000, 0x0002, 0x0004] {
            assert_eq!(float(&regs, addr), 230.0);
        }
        assert_eq!(float(&regs, 0x0006), 10.0);
        assert_eq!(float(&regs, 0x0008), 12.5);
        assert_eq!(float(&regs, 0x000A), 16.0);
        assert_eq!(float(&regs, 0x000C), 2300.0);
        assert_eq!(float(&regs, 0x000E), 2875.0);
        assert_eq!(float(&regs, 0x0010), 3680.0);
        assert_eq!(float(&regs, 0x0034), 8855.0);
        assert_eq!(float(&regs, 0x0048), 1.25);
    }

    #[test]
    fn windows_are_bounded() {
        let regs = vec![7u16; IMAGE_LEN];
        assert_eq!(window(&regs, 0x48, 2), Ok(vec![7, 7]));
        assert_eq!(
            window(&regs, 0x4F, 2),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(window(&regs, 0, 0), Err(ExceptionCode::IllegalDataValue));
    }
}
