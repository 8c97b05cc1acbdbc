"""LMNH kiosk feedback: validate every kiosk message and load it into PostgreSQL exactly once."""
