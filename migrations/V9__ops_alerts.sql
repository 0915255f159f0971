-- When each operator alert condition was last sent to Slack, so every
-- container together sends at most one message per condition per hour.
CREATE TABLE ops_alerts (
    condition     text PRIMARY KEY,
    last_sent_at  timestamptz NOT NULL
);
