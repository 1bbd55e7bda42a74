"""Brokers (SHARP agents): hold tickets from sites, sell sub-tickets (docs/design.md section 10)."""
