"""What the switch tells: logs for journald, sd_notify, one status snapshot."""
