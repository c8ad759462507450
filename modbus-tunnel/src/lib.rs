//! Modbus through the OCPP overlay.
//!
//! This crate will hold the Modbus PDUs carried inside overlay messages, the gateway that relays
//! them to Modbus TCP/RTU devices on the site (with timeouts and strict reply validation), and the
//! register maps of the grid-connection meters that dynamic load management reads. Intentionally
//! empty until the DLM work lands.
