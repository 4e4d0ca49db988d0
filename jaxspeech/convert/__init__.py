"""Converter machinery shared by the families' checkpoint converters; it never imports a family."""
