"""gkd_lib."""
