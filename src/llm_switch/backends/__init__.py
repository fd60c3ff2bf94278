"""Clients of the model servers behind the switch."""
