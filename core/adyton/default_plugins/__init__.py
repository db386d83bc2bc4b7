"""Kernel fallbacks, registered like any plugin (``trylast``)."""
