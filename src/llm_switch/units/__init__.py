"""systemd: the user manager over D-Bus, and the journal."""
