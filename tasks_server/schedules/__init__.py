"""Recurring schedules: ``policy`` decides purely which slots fire (misfire, overlap),
``runner`` turns those decisions into ordinary tasks through the store, exactly once."""
