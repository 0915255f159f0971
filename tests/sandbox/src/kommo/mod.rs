//! Kommo v4 sandbox.
