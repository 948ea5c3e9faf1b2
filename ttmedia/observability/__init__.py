"""Metrics, logging and the event-loop lag monitor: imported by every layer, importing none."""
