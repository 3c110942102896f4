//! The shipped plugins against their real backing services.

mod mysql;
mod postgres;
mod rabbitmq;
mod redis;
