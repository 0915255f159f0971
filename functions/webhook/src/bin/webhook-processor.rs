//! SQS function: processes buffered Kommo deliveries.

fn main() {}
