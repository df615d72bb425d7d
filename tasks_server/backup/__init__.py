"""Backups of the SQLite database and restores: ``policy`` (names, retention, schedule;
pure), ``snapshot`` (hashing and atomic writes), ``targets`` (a directory or an S3
bucket), ``job`` (take one, or run them on a clock in the server) and ``restore``."""
