//! The integrations outbox: enqueue, claim with a lease, settle, requeue.
