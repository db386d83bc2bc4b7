"""Alembic's environment for ``Database.upgrade`` (env.py); plugins keep
their revisions in their own versions directory, never here."""
