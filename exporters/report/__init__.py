"""Rendering: report.json, report.md and report.html, and their matplotlib figures. Imports nothing else of
exporters."""
