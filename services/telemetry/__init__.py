"""Telemetry service: persists what nodes report to PostgreSQL and answers fleet queries."""
